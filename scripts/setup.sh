#!/usr/bin/env bash
# Set up kpatch-tool on Debian 12: system packages (as root), deb-src entries
# for `apt-get source qemu|xen`, and a virtual environment with kpt in it.
# Idempotent: a second run with everything present prints one line.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${KPT_VENV:-$here/.venv}

# One list, shared with `kpt doctor`, so the two never disagree.
mapfile -t pkgs < <(grep -v '^\s*#' "$here/scripts/packages.txt" | sed '/^\s*$/d')

missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

need_src=0
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
	need_src=1
fi

if [ "$need_src" = 1 ] || [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "setup: need root to install: ${missing[*]:-} ${need_src:+deb-src entries}" >&2
		exit 7
	fi
	if [ "$need_src" = 1 ] && [ -f /etc/apt/sources.list.d/debian.sources ]; then
		# apt-get source needs source indexes; derive them from the binary entries.
		sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
			> /etc/apt/sources.list.d/kpt-deb-src.sources
	elif [ "$need_src" = 1 ] && [ -f /etc/apt/sources.list ]; then
		grep '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' > /etc/apt/sources.list.d/kpt-deb-src.list
	fi
	echo "setup: installing ${#missing[@]} package(s): ${missing[*]:-}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	if [ ${#missing[@]} -gt 0 ]; then
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
fi

if [ ! -x "$venv/bin/kpt" ] || [ "$here/pyproject.toml" -nt "$venv/.kpt-installed" ]; then
	echo "setup: creating virtual environment in $venv"
	python3 -m venv "$venv"
	"$venv/bin/pip" install -q --disable-pip-version-check -e "$here[test]"
	touch "$venv/.kpt-installed"
fi
echo "setup: ready ($venv/bin/kpt)"
