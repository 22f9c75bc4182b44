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

LINE_BREAK = "the name contains a line break; rename it"
NOT_UTF8 = "the name is not valid UTF-8 (shown with \\udcXX escapes for its stray bytes); rename it"


def path_max(root) -> int:
    """The longest path (in bytes) the file system under ``root`` takes (PATH_MAX; 4096 where it is not known)."""
    try:
        return os.pathconf(root, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 4096


def name_problem(path: str, name: str, limit: int) -> str | None:
    """Why ``name`` (at ``path``) cannot be used, or None: a line break, bytes that are not UTF-8, too long a path."""
    if "\n" in name or "\r" in name:
        return LINE_BREAK
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return NOT_UTF8
    if len(os.fsencode(path)) >= limit:
        return (f"the path is longer than this system's limit of {limit:,} bytes; move the files to a shorter "
                "path")
    return None


@dataclass(frozen=True)
class FolderListing:
    """Every regular file under the class folders of one split, in class then file-name order.

    ``skipped``: what the walk left out, as ``{"path", "reason"}`` (a folder reached again through a
    symbolic link, an unreadable folder, a broken link, a FIFO or device, a name with a line break or
    not valid UTF-8, a path longer than the system's limit).
    """

    root: Path
    classes: list[str]
    files: list[str]          # paths relative to root, "class/name"
    labels: list[int]
    skipped: tuple = ()

    def images(self) -> FolderListing:
        """Only the files whose extension torchvision's ImageFolder accepts (case-insensitive); none is a UserError."""
        keep = [i for i, f in enumerate(self.files) if f.lower().endswith(IMG_EXTENSIONS)]
        if not keep:
            raise UserError(
                f"{self.root} has no image files (.jpg, .jpeg, .png, ...); put the images in {self.root}/<class>/."
            )
        return FolderListing(self.root, self.classes, [self.files[i] for i in keep], [self.labels[i] for i in keep],
                             self.skipped)


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
    """List a class-folder split; an empty or class-less folder is a UserError.

    Symbolic links are followed, but each real folder (device, inode) is walked once: a link to a
    folder already walked (a loop, a link to ``.`` or to a parent, a second link to one folder) is
    skipped and listed in ``skipped``, as is everything else the walk cannot use.
    """
    root = check_folder(path, what)
    try:
        classes, _ = find_classes(str(root))
    except FileNotFoundError:
        raise UserError(
            f"{what} {root} has no class subfolders; put each class's images in its own subfolder "
            f"({root}/<class>/<image>.JPEG)."
        ) from None
    except OSError as exc:
        raise UserError(f"{what} {root} cannot be read ({exc.strerror or exc}); check its permissions.") from None
    walked, skipped, files, labels = {_folder_id(root)}, [], [], []     # walked: (device, inode) of folders
    limit = path_max(root)
    for label, name in _class_folders(root, classes, walked, skipped, limit):
        class_files = _walk(root, name, walked, skipped, limit)
        files.extend(class_files)
        labels.extend([label] * len(class_files))
    if not files:
        detail = f" ({len(skipped)} skipped, first: {skipped[0]['path']}: {skipped[0]['reason']})" if skipped else ""
        raise UserError(
            f"{what} {root} has class folders but no files in them{detail}; put the images in {root}/<class>/."
        )
    return FolderListing(root, classes, files, labels, tuple(skipped))


def _class_folders(root: Path, classes: list[str], walked: set, skipped: list, limit: int) -> list[tuple[int, str]]:
    """(label, name) of the class folders to walk; each one's (device, inode) is added to ``walked``."""
    tops = []
    for label, name in enumerate(classes):
        problem = name_problem(str(root / name), name, limit)
        if problem:
            skipped.append({"path": str(root / name), "reason": problem})
            continue
        try:
            key = _folder_id(root / name)
        except OSError as exc:
            skipped.append(_unreadable(root / name, exc))
            continue
        if key in walked:
            skipped.append({"path": str(root / name), "reason": "the same folder as another class folder (a "
                            "symbolic link); its files are listed once, under the first class"})
            continue
        walked.add(key)
        tops.append((label, name))
    return tops


def _folder_id(path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _unreadable(path, exc: OSError) -> dict:
    return {"path": str(path), "reason": f"unreadable folder ({exc.strerror or exc}); its files are not used"}


def _walk(root: Path, top: str, walked: set, skipped: list, limit: int) -> list[str]:
    """Files under ``root/top`` (paths relative to root, sorted); a subfolder whose (device, inode) is
    in ``walked`` is skipped, every other one is added to it and walked."""
    found, todo = [], [top]
    while todo:
        rel = todo.pop()
        try:
            with os.scandir(root / rel) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            skipped.append(_unreadable(root / rel, exc))
            continue
        subfolders = []
        for entry in entries:
            path = os.path.join(rel, entry.name)
            problem = name_problem(entry.path, entry.name, limit)
            if problem:
                skipped.append({"path": str(root / path), "reason": problem})
            elif entry.is_dir():
                try:
                    key = (entry.stat().st_dev, entry.stat().st_ino)
                except OSError as exc:
                    skipped.append(_unreadable(root / path, exc))
                    continue
                if key in walked:
                    skipped.append({"path": str(root / path), "reason": "a folder already listed (a symbolic link "
                                    "loop, or a second link to one folder); its files are listed once"})
                else:
                    walked.add(key)
                    subfolders.append(path)
            elif entry.is_file():
                found.append(path)
            elif entry.is_symlink() and not os.path.exists(entry.path):
                skipped.append({"path": str(root / path), "reason": "a symbolic link to nothing (broken link)"})
            else:
                skipped.append({"path": str(root / path), "reason": "not a regular file or folder"})
        todo.extend(reversed(subfolders))              # walk subfolders in name order
    found.sort()
    return found


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
