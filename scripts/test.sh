#!/usr/bin/env bash
# Runs Lifeboat's whole test suite. Installs what the tests need first:
# Debian packages (e2fsprogs, xfsprogs) and the versitygw S3 server that the
# S3 backend tests start on 127.0.0.1. Needs root for apt-get and for the
# tests that mount loop and tmpfs filesystems (reflink, full disk).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== %s\n' "$*" >&2; }

pkgs=()
command -v mkfs.ext4 >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.ext4 ] || pkgs+=(e2fsprogs)
command -v mkfs.xfs >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.xfs ] || pkgs+=(xfsprogs)
command -v mount >/dev/null 2>&1 || pkgs+=(mount)
if [ ${#pkgs[@]} -gt 0 ]; then
	log "installing ${pkgs[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

gobin="$(go env GOPATH)/bin"
export PATH="$gobin:$PATH"
if ! command -v versitygw >/dev/null 2>&1; then
	log "installing versitygw (S3 server for the S3 backend tests; ~2 min cold)"
	go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
fi

log "gofmt"
unformatted=$(gofmt -l cmd internal bench 2>/dev/null || true)
if [ -n "$unformatted" ]; then
	echo "not gofmt-formatted:" >&2
	echo "$unformatted" >&2
	exit 1
fi
log "go vet"
go vet ./...

# Tests that must not skip in CI fail instead when CI=true.
log "go test -race (all packages)"
go test -race -timeout 30m ./...

log "fuzz targets (short pass)"
# `go test -list` prints a package's targets, then "ok  PACKAGE ...".
go test -list '^Fuzz' ./... | awk '/^Fuzz/ {t[n++]=$1} /^ok/ {for (i=0;i<n;i++) print $2, t[i]; n=0}' |
	while read -r pkg target; do
		go test -run '^$' -fuzz "^${target}\$" -fuzztime 5s "$pkg" >/dev/null || { echo "fuzz target $target in $pkg failed" >&2; exit 1; }
	done
log "all tests passed"
