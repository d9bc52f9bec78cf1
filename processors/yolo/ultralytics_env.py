"""Import ultralytics fully offline, with its state under one config directory.

ultralytics reads its environment once, at import: whether it is online (a DNS probe unless
``YOLO_OFFLINE``), whether it may pip-install missing packages (``YOLO_AUTOINSTALL``), and where
its settings live (``YOLO_CONFIG_DIR``). It then syncs analytics when the ``sync`` setting is on
and downloads ``Arial.ttf`` when a dataset is checked and the font is not in its config dir.

:func:`offline_ultralytics` sets all of that before the first import and returns the module:

- ``YOLO_OFFLINE=1``, ``YOLO_AUTOINSTALL=False``, ``HF_HUB_OFFLINE=1``, ``YOLO_VERBOSE=False``
  (unless the caller set them), ``YOLO_CONFIG_DIR=<config_dir>``;
- settings: ``sync=False``, every integration off, and ``datasets_dir`` / ``weights_dir`` /
  ``runs_dir`` inside ``config_dir`` so nothing is written to the working directory;
- ``<config_dir>/Ultralytics/Arial.ttf`` (and ``Arial.Unicode.ttf``) copied from matplotlib's
  DejaVuSans, so no font is downloaded;
- torchvision's ``nms`` repaired first when its compiled ops do not load on CPU torch;
- ``OMP_NUM_THREADS`` left as it was (ultralytics sets it to 1 at import when unset).

Invariants: idempotent; the first call in a process fixes the config directory (ultralytics
cannot move it after import), later calls with another directory log a warning and reuse the
first. Settings are written only when they differ, so concurrent processes rarely race on them.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from types import ModuleType

__all__ = ["default_config_dir", "offline_ultralytics"]

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_configured: dict[str, Path] = {}
_FONTS = ("Arial.ttf", "Arial.Unicode.ttf")
_INTEGRATIONS_OFF = {
    "sync": False,
    "clearml": False,
    "comet": False,
    "dvc": False,
    "mlflow": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
    "vscode_msg": False,
    "openvino_msg": False,
}


def default_config_dir() -> Path:
    """Where ultralytics keeps its state when the caller names no directory: a per-user temp dir."""
    return Path(tempfile.gettempdir()) / f"skyloop-ultralytics-{os.getuid()}"


def _install_fonts(user_dir: Path) -> None:
    import matplotlib

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    user_dir.mkdir(parents=True, exist_ok=True)
    for name in _FONTS:
        target = user_dir / name
        if not target.exists():
            # Copy then rename so a concurrent process never sees a half-written font.
            partial = target.with_suffix(f".{os.getpid()}.part")
            shutil.copyfile(source, partial)
            partial.replace(target)


def offline_ultralytics(config_dir: Path | None = None) -> ModuleType:
    """Configure and import ``ultralytics`` so that it never touches the network; return it."""
    wanted = (config_dir or default_config_dir()).resolve()
    with _lock:
        if "dir" in _configured:
            if _configured["dir"] != wanted:
                _log.warning(
                    "ultralytics already uses %s in this process; ignoring %s",
                    _configured["dir"],
                    wanted,
                )
            import ultralytics

            return ultralytics
        for key, value in (
            ("YOLO_OFFLINE", "1"),
            ("YOLO_AUTOINSTALL", "False"),
            ("HF_HUB_OFFLINE", "1"),
            ("YOLO_VERBOSE", "False"),
        ):
            os.environ.setdefault(key, value)
        os.environ["YOLO_CONFIG_DIR"] = str(wanted)
        user_dir = wanted / "Ultralytics"
        _install_fonts(user_dir)
        # Imported here: the trainer's parent process needs this module's paths, not torch.
        from processors.core.torchvision_compat import ensure_torchvision_ops

        ensure_torchvision_ops()
        omp_before = os.environ.get("OMP_NUM_THREADS")
        import ultralytics

        # ultralytics sets OMP_NUM_THREADS=1 at import when unset; undo that so this process
        # and its children keep the thread counts their caller chose.
        if omp_before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        from ultralytics.utils import SETTINGS

        wanted_settings: dict[str, object] = {
            **_INTEGRATIONS_OFF,
            "datasets_dir": str(wanted / "datasets"),
            "weights_dir": str(wanted / "weights"),
            "runs_dir": str(wanted / "runs"),
        }
        changed = {k: v for k, v in wanted_settings.items() if SETTINGS.get(k) != v}
        if changed:
            SETTINGS.update(changed)
        _configured["dir"] = wanted
        return ultralytics
