"""Class-folder splits (``D/<class>/<image>``): listing, class order, and the checks a user can fail.

Class indices follow the sorted folder names (torchvision's ``find_classes``), which for ILSVRC-2012
is the standard order n01440764 = 0 ... n15075141 = 999.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

from ..errors import UserError


@dataclass(frozen=True)
class FolderListing:
    """Every regular file under the class folders of one split, in class then file-name order."""

    root: Path
    classes: list[str]
    files: list[str]          # paths relative to root, "class/name"
    labels: list[int]

    def images(self) -> "FolderListing":
        """Only the files whose extension torchvision's ImageFolder accepts (case-insensitive)."""
        keep = [i for i, f in enumerate(self.files) if f.lower().endswith(IMG_EXTENSIONS)]
        return FolderListing(self.root, self.classes, [self.files[i] for i in keep], [self.labels[i] for i in keep])


def check_folder(path, what: str = "data folder") -> Path:
    """An existing directory, or a UserError naming the path and the fix."""
    root = Path(path).expanduser()
    if not root.exists():
        raise UserError(
            f"{what} {root} does not exist; pass a folder whose subfolders are the classes (e.g. "
            f"{root}/n01440764/*.JPEG)."
        )
    if not root.is_dir():
        raise UserError(f"{what} {root} is a file, not a folder; pass a folder whose subfolders are the classes.")
    return root


def list_split(path, what: str = "data folder") -> FolderListing:
    """List a class-folder split; an empty or class-less folder is a UserError."""
    root = check_folder(path, what)
    try:
        classes, _ = find_classes(str(root))
    except FileNotFoundError:
        raise UserError(
            f"{what} {root} has no class subfolders; put each class's images in its own subfolder "
            f"({root}/<class>/<image>.JPEG)."
        ) from None
    files, labels = [], []
    for label, name in enumerate(classes):
        class_files = []
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            class_files.extend(os.path.join(rel, f) for f in filenames)
        class_files.sort()
        files.extend(class_files)
        labels.extend([label] * len(class_files))
    if not files:
        raise UserError(f"{what} {root} has class folders but no files in them; put the images in {root}/<class>/.")
    return FolderListing(root, classes, files, labels)


def check_same_classes(train_classes, val_classes, train_path, val_path) -> None:
    """Train and val must name the same classes, or class indices would disagree."""
    if list(train_classes) == list(val_classes):
        return
    only_train = sorted(set(train_classes) - set(val_classes))
    only_val = sorted(set(val_classes) - set(train_classes))
    detail = []
    if only_train:
        detail.append(f"{len(only_train)} only in train (first: {only_train[0]})")
    if only_val:
        detail.append(f"{len(only_val)} only in val (first: {only_val[0]})")
    raise UserError(
        f"class folders of {train_path} and {val_path} differ ({', '.join(detail)}); "
        "give both splits the same class folders (an empty folder is fine)."
    )


def split_folder(root, split: str) -> Path:
    """``root/train`` or ``root/val`` (``root/test`` is accepted as the val split, as in CIFAR copies)."""
    base = check_folder(root, "data.root")
    candidates = [base / split] + ([base / "test"] if split == "val" else [])
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise UserError(
        f"data.root {base} has no {split}/ folder; it must hold train/ and val/ (each with class subfolders)."
    )
