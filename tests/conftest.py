import os
import random

# Every ROS process a test starts keeps DDS discovery on loopback and on a domain of its own.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(100, 200)))
os.environ.setdefault("MPLBACKEND", "Agg")


def _cache_exports(cache: str, write: bool, only: tuple[str, ...]) -> None:
    """Mutation runs only (``tests/mutation.py`` sets ``METARL_TEST_EXPORT_CACHE``): serve
    ``export_bundle`` from bundles exported once by the unmutated code.

    A group's tests export a dozen small bundles (about 2.5 s each) in fixtures, and mutmut re-runs
    them for every mutant, so without this a mutant's run is mostly ONNX export. The key is the
    checkpoint's bytes, the options and the output's name; a miss exports as usual. ``only`` (the
    export group) limits it to some test files, so that the tests of export export with the mutant.
    """
    import hashlib
    import json
    import shutil
    from pathlib import Path

    import metarl_robot.export as export
    from metarl_robot.runtime.integrity import write_manifest

    real = export.export_bundle

    def export_bundle(checkpoint_path, out_dir, **kwargs):
        checkpoint_path, out_dir = Path(checkpoint_path), Path(out_dir)
        if only and not os.environ.get("PYTEST_CURRENT_TEST", "").startswith(only):
            return real(checkpoint_path, out_dir, **kwargs)
        if not checkpoint_path.is_file() or (out_dir.exists() and not kwargs.get("overwrite")):
            return real(checkpoint_path, out_dir, **kwargs)
        key = hashlib.sha256(checkpoint_path.read_bytes() + repr((sorted(kwargs.items()), out_dir.name)).encode())
        entry = Path(cache) / key.hexdigest()[:32]
        if entry.is_dir():
            if out_dir.exists():
                shutil.rmtree(out_dir)
            shutil.copytree(entry, out_dir)
            # the manifest names the checkpoint it came from: the one in this test's directory
            manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
            manifest["provenance"]["checkpoint_path"] = str(checkpoint_path.resolve())
            write_manifest(out_dir / "manifest.json", manifest)
            return out_dir
        result = real(checkpoint_path, out_dir, **kwargs)
        if write:
            shutil.copytree(result, entry, dirs_exist_ok=True)
        return result

    export.export_bundle = export_bundle


if os.environ.get("METARL_TEST_EXPORT_CACHE"):
    _cache_exports(os.environ["METARL_TEST_EXPORT_CACHE"], os.environ.get("METARL_TEST_EXPORT_CACHE_WRITE") == "1",
                   tuple(filter(None, os.environ.get("METARL_TEST_EXPORT_CACHE_ONLY", "").split(","))))
