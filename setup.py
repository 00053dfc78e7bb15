"""Metadata lives in setup.cfg. This file adds one build step: the project's plain folders (data cards and
splits, specs, mini VLSMs, the paper's tables) are copied into the wheel under `trainables/_shipped/`, where
`trainables.resources` finds them when the package runs outside a checkout. They stay plain folders (no
`__init__.py`): a `datasets` package would shadow Hugging Face `datasets`."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# Keep in step with trainables.resources.FOLDERS.
SHIPPED = ("datasets", "experiments", "models", "results/paper")
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "__init__.py", ".*")


class BuildWithResources(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the checkout itself
            return
        dest = Path(self.build_lib) / "trainables" / "_shipped"
        for rel in SHIPPED:
            src = ROOT / rel
            if src.is_dir():
                shutil.copytree(src, dest / rel, ignore=SKIP, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithResources})
