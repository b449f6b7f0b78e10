#!/bin/sh
# meson install: puts the sample config at SYSCONFDIR/mpool/mpoold.conf
# unless a file is there already, so reinstalling never overwrites what an
# administrator edited.  (A distribution package ships it as a conffile.)
set -eu
src=$1
dir=${DESTDIR:-}$2
mkdir -p "$dir"
if [ -e "$dir/mpoold.conf" ]; then
	echo "Keeping $dir/mpoold.conf; the new sample is $src"
else
	install -m 0644 "$src" "$dir/mpoold.conf"
	echo "Installing $src to $dir/mpoold.conf"
fi
