#!/usr/bin/env bash
# Installs the build into a temporary prefix and builds a program against it
# with pkg-config, shared and static, as a user of the library would.
set -euo pipefail
build=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" > /dev/null
cat > "$tmp/use.c" <<'C'
#include <alignprop.h>
#include <stdio.h>
#include <string.h>
int main(void) {
    ap_ctx *c = ap_ctx_create();
    if (!c || ap_version() != AP_VERSION_NUMBER || strcmp(ap_version_string(), AP_VERSION_STRING)) return 1;
    ap_tensor *t = ap_tensor_zeros(c, AP_F32, 2, (int64_t[]){2, 3});
    int ok = t && ap_tensor_numel(t) == 6 && ap_last_status(c) == AP_OK;
    ap_tensor_release(t);
    ap_ctx_free(c);
    puts(ok ? "ok" : "bad");
    return !ok;
}
C
export PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig"
test -x "$tmp/prefix/bin/alignprop"
"$tmp/prefix/bin/alignprop" version | grep -q "alignprop"
cc "$tmp/use.c" $(pkg-config --cflags --libs alignprop) -Wl,-rpath,"$tmp/prefix/lib" -o "$tmp/use_shared"
"$tmp/use_shared" | grep -qx ok
cc "$tmp/use.c" $(pkg-config --cflags alignprop) "$tmp/prefix/lib/libalignprop.a" \
   $(pkg-config --static --libs-only-l alignprop | sed 's/-lalignprop//') -o "$tmp/use_static"
"$tmp/use_static" | grep -qx ok
echo "install and pkg-config: ok"
