#!/bin/sh
# Refresh the map page's vendored browser libraries from their npm package tarballs (`npm pack`),
# keeping only the built files the page loads and each package's licence. Run it from anywhere with
# npm on the PATH; an installed fleet needs neither npm nor the internet: these files ship inside
# the Python package (pyproject package-data).
#
# To move to a new version, change it below, run this script, load /map and commit the result.
set -eu

LEAFLET=1.9.4
MARKERCLUSTER=1.5.3
UPLOT=1.6.32

here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cd "$work"
npm pack --silent "leaflet@$LEAFLET" "leaflet.markercluster@$MARKERCLUSTER" "uplot@$UPLOT" >/dev/null

unpack() {  # tarball, destination folder, files under package/ to keep...
    tarball=$1; dest=$2; shift 2
    rm -rf "$work/x" && mkdir "$work/x"
    tar xzf "$tarball" -C "$work/x"
    rm -rf "${here:?}/$dest" && mkdir -p "$here/$dest"
    for file in "$@"; do
        mkdir -p "$here/$dest/$(dirname "$file")"
        cp "$work/x/package/$file" "$here/$dest/$file"
    done
}

unpack "leaflet-$LEAFLET.tgz" leaflet LICENSE dist/leaflet.js dist/leaflet.css \
    dist/images/layers.png dist/images/layers-2x.png dist/images/marker-icon.png \
    dist/images/marker-icon-2x.png dist/images/marker-shadow.png
unpack "leaflet.markercluster-$MARKERCLUSTER.tgz" markercluster MIT-LICENCE.txt \
    dist/leaflet.markercluster.js dist/MarkerCluster.css dist/MarkerCluster.Default.css
unpack "uplot-$UPLOT.tgz" uplot LICENSE dist/uPlot.iife.min.js dist/uPlot.min.css

cat > "$here/VERSIONS" <<VERSIONS
leaflet $LEAFLET
leaflet.markercluster $MARKERCLUSTER
uplot $UPLOT
VERSIONS
echo "vendored: leaflet $LEAFLET, leaflet.markercluster $MARKERCLUSTER, uplot $UPLOT"
