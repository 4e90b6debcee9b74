#!/bin/sh
# Weights files ldmc writes, read by a reader that is not ldmc's (tests/ref/check_official_keys.py:
# json and numpy): for each tiny config, `ldmc init` writes the official layout, whose keys and
# shapes must be exactly those of the PyTorch modules (tests/ref/data/keys_<config>.json), in
# F32 and, through `ldmc convert`, in BF16 and F16; official -> diffusers -> official is byte for
# byte lossless; and the full-size configs' key lists (`ldmc info --keys`) match too.
# Usage: tests/test_official_layout.sh path/to/ldmc SOURCE_DIR
set -eu
ldmc=$1
src=$2
python=/usr/bin/python3  # Debian's, with python3-numpy (scripts/setup.sh)
check="$python $src/tests/ref/check_official_keys.py"
keys=$src/tests/ref/data
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for config in tiny_unet_text tiny_unet_class tiny_vae; do
    cfg=$src/configs/$config.yaml
    "$ldmc" init "$cfg" "$tmp/$config.safetensors" --seed 7 >/dev/null
    $check "$tmp/$config.safetensors" "$keys/keys_$config.json" --dtype F32
    for dtype in BF16 F16; do
        "$ldmc" convert "$tmp/$config.safetensors" "$tmp/$config.$dtype.safetensors" --config "$cfg" \
            --to official --dtype "$dtype" >/dev/null
        $check "$tmp/$config.$dtype.safetensors" "$keys/keys_$config.json" --dtype "$dtype"
    done
done

for config in tiny_unet_text tiny_vae; do  # class-conditional UNets have no diffusers layout
    cfg=$src/configs/$config.yaml
    "$ldmc" convert "$tmp/$config.safetensors" "$tmp/$config.diffusers" --config "$cfg" >/dev/null
    "$ldmc" convert "$tmp/$config.diffusers" "$tmp/$config.back.safetensors" --config "$cfg" >/dev/null
    cmp "$tmp/$config.safetensors" "$tmp/$config.back.safetensors"
    echo "$config: official -> diffusers -> official is byte-identical"
done

for config in sdxl_base sdxl_refiner sdxl_vae cin_size_cond cin_nocond; do
    "$ldmc" info "$src/configs/$config.yaml" --keys >"$tmp/$config.keys"
    $check --keys-from "$tmp/$config.keys" "$keys/keys_$config.json"
done
echo "all official-layout checks passed"
