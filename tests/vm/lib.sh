# shellcheck shell=bash
# Shared helpers of the guest scripts (sourced by prepare.sh and boot.sh, never run directly):
# messages, and copying an executable into an initramfs staging folder with the shared libraries
# that `ldd` lists for it.

say() { echo "guest: $*" >&2; }
die() {
    echo "guest: error: $*" >&2
    exit 1
}

# The shared libraries of executable $1 (absolute paths, one a line, the loader included).
# A static executable has none.
ldd_libs() {
    local out
    out=$(LC_ALL=C timeout 30 ldd "$1" 2>&1) || {
        [[ "$out" == *"not a dynamic executable"* || "$out" == *"statically linked"* ]] && return 0
        die "ldd $1 failed: $out"
    }
    awk '/=> \// { print $3; next } /^[[:space:]]*\/[^ ]+ \(0x/ { print $1 }' <<<"$out"
}

# copy_exe STAGE SRC DEST: copies executable SRC to STAGE/DEST (a path inside the guest) and
# every library it needs to the same path inside STAGE, following symlinks. Debug information is
# stripped from the copy when `strip` is available (the guest has no debugger, the initrd shrinks).
copy_exe() {
    local stage=$1 src=$2 dest=$3 lib
    [ -x "$src" ] || die "not an executable: $src"
    mkdir -p "$stage/$(dirname "$dest")"
    cp -L "$src" "$stage/$dest"
    if command -v strip >/dev/null 2>&1; then
        timeout 60 strip --strip-debug "$stage/$dest" 2>/dev/null || cp -L "$src" "$stage/$dest"
    fi
    chmod 0755 "$stage/$dest"
    while read -r lib; do
        [ -n "$lib" ] || continue
        [ -e "$stage/$lib" ] && continue
        mkdir -p "$stage/$(dirname "$lib")"
        cp -L "$lib" "$stage/$lib"
    done < <(ldd_libs "$src")
}

# make_cpio STAGE OUT: a newc archive of STAGE's contents, everything owned by root.
make_cpio() {
    (cd "$1" && find . -mindepth 1 -print0 | LC_ALL=C sort -z \
        | timeout 120 cpio --null -o -H newc -R 0:0 --quiet) >"$2"
}
