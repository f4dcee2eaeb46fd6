#!/usr/bin/env bash
# Print the Debian mirror this machine's own apt uses (the first `deb` source of the main archive),
# so that CI never names a mirror host itself.
#   usage: .ci/apt_mirror.sh [APT_ETC]   (default /etc/apt; reads sources.list.d/*.sources, then sources.list)
set -euo pipefail
apt_etc="${1:-/etc/apt}"
mirror=""
# deb822 files: "URIs:" lines of a "Types: deb" stanza; security and ports archives are not the main one.
for file in "$apt_etc"/sources.list.d/*.sources; do
    [ -f "$file" ] || continue
    mirror=$(awk '
        /^[[:space:]]*$/ { if (deb && uri != "") { print uri; exit } deb = 0; uri = ""; next }
        /^Types:/ { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
        /^URIs:/  { for (i = 2; i <= NF; i++) if ($i !~ /-security\/?$/ && $i !~ /-ports\/?$/) { uri = $i; break } }
        END { if (deb && uri != "") print uri }' "$file" | head -n 1)
    [ -n "$mirror" ] && break
done
# One-line format: "deb [options] URI suite components".
if [ -z "$mirror" ] && [ -f "$apt_etc/sources.list" ]; then
    mirror=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { if ($i !~ /-security\/?$/) print $i; break } }' \
             "$apt_etc/sources.list" | head -n 1)
fi
if [ -z "$mirror" ]; then
    echo "apt_mirror: no deb source in $apt_etc/sources.list.d/*.sources or $apt_etc/sources.list; set DEBIAN_MIRROR" >&2
    exit 1
fi
echo "${mirror%/}"
