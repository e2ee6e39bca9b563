#!/usr/bin/env bash
# One device call that checks the runtime's CUDA and TensorRT execution providers and their speed,
# GPU rows beside CPU rows of the same run (bench/gpu_providers.py). Prepared on a machine without
# a GPU; see BENCHMARKS.md, "GPU execution providers (prepared, not yet run)".
#
# 1. PREPARE HERE, once, in the repo root (network needed; took 13 s here, download included):
#
#      bash bench/gpu_check.sh prep
#
#    which runs (the README of the device tool gives the download line):
#      echo /.whl/ >> "$(git rev-parse --git-path info/exclude)"     # only if not there yet
#      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d /tmp/ortgpu-download onnxruntime-gpu==1.31.1
#    and then slims that wheel into .whl/ (below): every onnxruntime-gpu wheel for cp312 is 183-287 MiB
#    (1.31.1: 244 MiB, 271 MiB of it the CUDA provider library, built for sm_75/80/86/89/90/120) and the
#    device call carries 64 MiB at most, working tree included. The slim wheel keeps only the sm_90
#    (H100/H200) kernel images of the multi-architecture CUDA modules, marks the modules built for
#    sm_90a alone (42 MiB) as having no image for this GPU (kernels an MLP does not launch), and leaves
#    out libonnxruntime.so (the C API library; Python does not load it) and the transformers,
#    quantization and tools helpers: 55.6 MiB, 59.6 MiB with the working tree. Untested on a GPU: whether
#    the driver accepts the rewritten fat binaries (if the cuda rows fail with a kernel-image error, see
#    BENCHMARKS.md for what else is possible). Nothing in the image provides TensorRT (libnvinfer.so.10),
#    so the tensorrt rows will say "fell back"; TensorRT's own libraries are far too large to carry.
#
# 2. THEN ONE CALL OF THE DEVICE TOOL (no kind named: an H100 by default):
#
#      run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=240)
#
#    Expected: about a minute after the machine starts. Results come back in $OUT: gpu_check.log
#    (everything printed) and gpu_providers.json. 240 s leaves time for one rerun inside the 15
#    minutes of device time; call give_back afterwards unless you rerun at once.
#
# Without an argument (on the device): installs .whl/*.whl into /tmp/site, puts /tmp/site and the
# repo on PYTHONPATH, points the loader at the CUDA 13 libraries of the image's nvidia pip packages,
# prints nvidia-smi and runs bench/gpu_providers.py. Without .whl it runs with the image's own
# onnxruntime (CPU build), which shows the "cuda: not available" lines and CPU rows only.
set -u

ORT_GPU_VERSION=1.31.1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

prep() {
  set -e
  local exclude dl
  exclude=$(git rev-parse --git-path info/exclude)
  mkdir -p "$(dirname "$exclude")"
  grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo /.whl/ >> "$exclude"
  dl=/tmp/ortgpu-download
  mkdir -p "$dl" .whl
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dl" "onnxruntime-gpu==$ORT_GPU_VERSION"
  rm -f .whl/onnxruntime_gpu-*.whl
  python3 - "$dl"/onnxruntime_gpu-"$ORT_GPU_VERSION"-cp312-*.whl .whl <<'PY'
"""Slim an onnxruntime-gpu wheel for one H100/H200 run: sm_90 kernel images only."""
import base64, hashlib, pathlib, struct, sys, zipfile

FATBIN_MAGIC, SM90, NO_MATCH_ARCH, SM75_FLAGS = 0xBA55ED50, 90, 75, 0x8011
DROP = ("onnxruntime/transformers/", "onnxruntime/quantization/", "onnxruntime/tools/")


def fatbin_section(data):
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = sections[shstrndx][4]
    for name, _, _, _, offset, size in sections:
        if data[names + name:].startswith(b".nv_fatbin\0"):
            return offset, offset + size
    raise SystemExit("no .nv_fatbin section: not the CUDA provider library this script knows")


def entries(data, start, end):
    """(offset, arch, bytes) of each image of the fat binary whose payload spans [start, end)."""
    out, e = [], start
    while e < end:
        header_size, size = struct.unpack_from("<IQ", data, e + 4)
        arch, = struct.unpack_from("<I", data, e + 28)
        out.append((e, arch, bytes(data[e:e + header_size + size])))
        e += header_size + size
    return out


def slim(data):
    """Keep the sm_90 image of every module that has one besides others; a module with an sm_90(a)
    image alone keeps one image header, re-marked as sm_75 with an empty payload, so that it has no
    image for this GPU, like the sm_120-only modules of the original. Blobs keep their offsets and
    sizes (the registration records point at them); freed bytes become zeros."""
    data = bytearray(data)
    off, end = fatbin_section(data)
    counts = {"kept": 0, "only_sm90": 0, "untouched": 0, "bytes_kept": 0}
    while off < end:
        magic, _, header_size, fat_size = struct.unpack_from("<IHHQ", data, off)
        if magic != FATBIN_MAGIC:
            off += 8
            continue
        body_start, body_end = off + header_size, off + header_size + fat_size
        images = entries(data, body_start, body_end)
        archs = [arch for _, arch, _ in images]
        if SM90 in archs and set(archs) != {SM90}:
            body = b"".join(blob for _, arch, blob in images if arch == SM90)
            counts["kept"] += 1
        elif set(archs) == {SM90}:
            head = bytearray(images[0][2][:64])
            struct.pack_into("<I", head, 4, 64)            # header size
            struct.pack_into("<Q", head, 8, 0)             # payload size
            struct.pack_into("<I", head, 16, 0)            # compressed size
            struct.pack_into("<I", head, 28, NO_MATCH_ARCH)
            struct.pack_into("<Q", head, 40, SM75_FLAGS)   # the flags the real sm_75 images carry
            struct.pack_into("<Q", head, 56, 0)            # uncompressed size
            body = bytes(head)
            counts["only_sm90"] += 1
        else:
            body = bytes(data[body_start:body_end])
            counts["untouched"] += 1
        counts["bytes_kept"] += len(body)
        struct.pack_into("<Q", data, off + 8, len(body))
        data[body_start:body_end] = body + bytes(fat_size - len(body))
        off = body_end
    return bytes(data), counts


def record_hash(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


src, dst_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
dst = dst_dir / src.name
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
    record = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
    lines = []
    for info in zin.infolist():
        name = info.filename
        if name == record or name.startswith(DROP) or "/capi/libonnxruntime.so" in name:
            continue
        data = zin.read(name)
        if name.endswith("/libonnxruntime_providers_cuda.so"):
            data, counts = slim(data)
            print(f"{name}: {counts['kept']} modules cut to their sm_90 image, {counts['only_sm90']} sm_90a-only "
                  f"modules emptied, {counts['untouched']} left as they were; {counts['bytes_kept'] / 2**20:.1f} MiB "
                  "of kernel images kept")
        out = zipfile.ZipInfo(name, date_time=info.date_time)
        out.external_attr = info.external_attr
        out.compress_type = zipfile.ZIP_DEFLATED
        zout.writestr(out, data, compresslevel=9)
        lines.append(f"{name},{record_hash(data)},{len(data)}")
    lines.append(f"{record},,")
    zout.writestr(record, "\n".join(lines) + "\n")
print(f"{src.name}: {src.stat().st_size / 2**20:.1f} MiB -> {dst} {dst.stat().st_size / 2**20:.1f} MiB")
PY
  local tree carried
  tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
  carried=$(du -cb .whl | tail -1 | cut -f1)
  echo "travels: working tree $((tree / 1048576)) MiB + .whl $((carried / 1048576)) MiB = $(((tree + carried) / 1048576)) MiB (limit 64 MiB)"
  [ $((tree + carried)) -lt $((63 * 1048576)) ] || { echo "too large to carry"; exit 1; }
}

if [ "${1:-}" = prep ]; then
  prep
  exit 0
fi

OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"

check() {
echo "== nvidia-smi"
nvidia-smi || echo "nvidia-smi failed"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>/dev/null

echo "== carried wheels"
if ls .whl/*.whl >/dev/null 2>&1; then
  ls -l .whl/*.whl
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing the carried wheels failed"; return 1; }
else
  echo "none: the image's own onnxruntime runs (CPU build: expect 'cuda: not available')"
fi
export PYTHONPATH=/tmp/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}

# onnxruntime-gpu 1.31.1 is built for CUDA 13: libcudart.so.13, libcublas(Lt).so.13, libcurand.so.10,
# libcufft.so.12 and cuDNN 9 come from the image's nvidia-* pip packages (those torch uses).
libdirs=$(python3 -c 'import glob, os, site; print(":".join(sorted({os.path.dirname(p) for d in site.getsitepackages() for p in glob.glob(d + "/nvidia/**/lib*.so*", recursive=True)})))')
export LD_LIBRARY_PATH=$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export CUDA_MODULE_LOADING=LAZY PYTHONUNBUFFERED=1
echo "== CUDA libraries (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)"
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libcufft.so.12 libcudnn.so.9 libnvinfer.so.10; do
  found=$(IFS=:; for d in $LD_LIBRARY_PATH; do [ -e "$d/$lib" ] && echo "$d/$lib" && break; done)
  echo "$lib: ${found:-not found}"
done
python3 -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.__file__, o.get_available_providers())'

echo "== bench/gpu_providers.py"
timeout 200 python3 bench/gpu_providers.py --out "$OUT/gpu_providers.json" --preload-dlls
rc=$?
echo "gpu_providers.py exit status $rc"
return $rc
}

check 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
