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
mapfile -t pkgs < <(awk '!/^[[:space:]]*#/ && NF { print $1 }' "$here/kpatch_tool/data/packages.txt")

missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

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
echo "setup: ready ($venv/bin/kpt)"
