#!/usr/bin/env bash
# Set up kpatch-tool on Debian 12: system packages (as root) and a virtual
# environment with kpt in it. The trees' Debian packages are not installed on the
# host: kpt fetches their pinned versions into its cache with an apt state of its
# own, so the host's apt configuration is left as it is.
# Idempotent: a second run with everything present prints one line.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${KPT_VENV:-$here/.venv}

# One list, shared with `kpt doctor`, so the two never disagree.
# provided CHECKS...: the package's checks (column 3) are all met by what the host has
# already (nodesource's nodejs ships npm; Debian's npm package would conflict with it).
provided() {
	[ $# -gt 0 ] || return 1
	for c in "$@"; do
		case "$c" in
			-|perl:*|git:*) return 1 ;;
			/*) [ -e "$c" ] || return 1 ;;
			*) command -v "$c" >/dev/null || return 1 ;;
		esac
	done
}

missing=()
while read -r p _stages checks; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' && continue
	# shellcheck disable=SC2086 # the checks are words
	provided $checks && continue
	missing+=("$p")
done < <(awk '!/^[[:space:]]*#/ && NF { sub(/#.*/, ""); print }' "$here/kpatch_tool/data/packages.txt")

if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "setup: need root to install: ${missing[*]}" >&2
		exit 7
	fi
	echo "setup: installing ${#missing[@]} package(s): ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$venv/bin/kpt" ] || [ "$here/pyproject.toml" -nt "$venv/.kpt-installed" ]; then
	echo "setup: creating virtual environment in $venv"
	python3 -m venv "$venv"
	"$venv/bin/pip" install -q --disable-pip-version-check -e "$here[test]"
	touch "$venv/.kpt-installed"
fi
# gitlab-ci-local (npm), pinned with every dependency by its package-lock.json, into the venv
# (never globally): the tests run kpt's emitted GitLab pipeline with it.
glci=$venv/gitlab-ci-local
if ! cmp -s "$here/scripts/gitlab-ci-local/package-lock.json" "$glci/package-lock.json" \
	|| [ ! -x "$glci/node_modules/.bin/gitlab-ci-local" ]; then
	echo "setup: installing gitlab-ci-local into $glci"
	mkdir -p "$glci"
	cp "$here/scripts/gitlab-ci-local/package.json" "$here/scripts/gitlab-ci-local/package-lock.json" "$glci/"
	npm ci --prefix "$glci" --no-audit --no-fund --loglevel=error >/dev/null
fi
echo "setup: ready ($venv/bin/kpt)"
