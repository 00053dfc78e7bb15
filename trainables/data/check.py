"""Validate a dataset on disk against its card: every entry resolves, every image and mask decodes, sizes
match, masks are binary, counts equal the card's (paper Table 1), no unexpected split leaks.

All problems are collected (not just the first) so that one run of `tunevlseg data check` lists everything
to fix; each names the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from trainables.data.cards import SPLITS, DataCard, load_card
from trainables.data.prepare import Progress
from trainables.data.readers import (AnnotationSource, DataError, Entry, Problem, decode_image, decode_mask,
                                     missing_files, read_annotation_file, scan_entries)


@dataclass
class SplitReport:
    split: str
    source: str = ""  # annotation file (or mask folder) the entries came from
    entries: int = 0
    images: int = 0
    expected: int | None = None
    alias_of: str | None = None
    problems: list[Problem] = field(default_factory=list)


@dataclass
class CheckReport:
    card: DataCard
    root: Path
    splits: list[SplitReport]
    notes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # cross-split problems (leaks)

    @property
    def all_problems(self) -> list[Problem]:
        return [p for s in self.splits for p in s.problems] + self.problems

    @property
    def ok(self) -> bool:
        return not self.all_problems

    def table(self) -> str:
        rows = [("split", "entries", "images", "expected", "problems", "annotations")]
        for s in self.splits:
            if s.alias_of:
                rows.append((s.split, "-", "-", "-", "-", f"same files as {s.alias_of}"))
                continue
            rows.append((s.split, str(s.entries), str(s.images), "-" if s.expected is None else str(s.expected),
                         str(len(s.problems)), _short(s.source, self.root)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

    def render(self, limit: int | None = 20) -> str:
        """The report; at most `limit` problem lines (None: all), then how many more there are."""
        lines = [f"{self.card.name} ({self.card.title}) at {self.root}", self.table()]
        if self.notes:
            lines += ["", "notes:"] + [f"  - {n}" for n in self.notes]
        problems = self.all_problems
        if problems:
            lines += ["", f"{len(problems)} problem{'s' if len(problems) > 1 else ''}:"]
            shown = problems if limit is None else problems[:limit]
            lines += [f"  {p}" for p in shown]
            if len(shown) < len(problems):
                lines.append(f"  ... and {len(problems) - len(shown)} more (--all lists every one)")
        else:
            lines += ["", "OK: no problems"]
        return "\n".join(lines)


def _short(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def _entry_key(item: dict) -> tuple[str, str]:
    return item.get("img_name"), item.get("mask_name")


def check_dataset(card: str | os.PathLike | DataCard, root: str | os.PathLike, splits=SPLITS, subset: bool = False,
                  annotations: AnnotationSource = "auto", decode: bool = True, stream=None) -> CheckReport:
    """Check `splits` of `card` under `root`. `subset=True` accepts fewer entries than the card's counts
    (e.g. a sample of the dataset) but then requires every entry to appear in the card's own split file."""
    card = load_card(card)
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} not found; see docs/data.md ({card.name}: {card.download})")
    _check_layout(card, root, splits)
    report = CheckReport(card, root, [])
    decoded: dict[Path, tuple | Problem] = {}  # image path -> (H, W) or its problem, shared across splits
    images_of: dict[str, set[Path]] = {}
    known_dups: set[str] = set()
    for split in splits:
        rep = SplitReport(split)
        report.splits.append(rep)
        src = card.source_split(split)
        if src != split:
            rep.alias_of = src
            if src not in splits:
                report.notes.append(f"{split} uses the {src} files; check {src} to validate them")
            continue
        rep.expected = card.expected_count(split)
        try:
            entries, rep.source, rep.problems = scan_entries(card, root, split, annotations)
        except DataError as e:
            rep.problems.append(Problem(str(root), str(e)))
            continue
        rep.entries = len(entries)
        rep.images = len({e.image for e in entries if e.image.is_file()})  # on disk, not just listed
        images_of[split] = {e.image for e in entries}
        names = [e.img_name for e in entries if e.img_name in card.known_duplicates]
        known_dups |= {n for n in names if names.count(n) > 1}
        _check_counts(card, rep, entries, subset, report.notes)
        if decode:
            _check_files(card, rep, entries, decoded, stream)
        else:
            rep.problems += missing_files(entries)
    _check_leaks(card, images_of, report)
    if known_dups:
        report.notes.append(f"known upstream duplicates kept for fidelity: {', '.join(sorted(known_dups))}")
    return report


def _check_layout(card: DataCard, root: Path, splits) -> None:
    """A root without any of the card's image folders is the wrong folder: say so once, not per file."""
    wanted = sorted({card.image_dir(s) for s in splits})
    if not any((root / d).is_dir() for d in wanted):
        inside = sorted(p.name for p in root.iterdir() if p.is_dir())[:5]
        nested = [d for d in inside if any((root / d / w).is_dir() for w in wanted)]
        hint = (f"; did you mean --root {root / nested[0]}?" if nested else
                f" (it holds {', '.join(inside) or 'no folders'})")
        raise FileNotFoundError(f"{card.name}: {root} has no {' or '.join(w + '/' for w in wanted)} folder, so it is not "
                                f"the dataset folder{hint}")


def _check_counts(card: DataCard, rep: SplitReport, entries: list[Entry], subset: bool, notes: list[str]) -> None:
    shipped = card.shipped_annotation(rep.split)
    own = shipped is not None and Path(rep.source) == shipped
    if not subset:
        if rep.expected is not None and rep.entries != rep.expected:
            fix = ("re-run `tunevlseg data prepare` on the complete download" if card.layout == "image_dir" else
                   f"use the card's split file (remove anns/{rep.split}.json)")
            rep.problems.append(Problem(rep.source, f"{rep.split} has {rep.entries} entries, the card expects "
                                                    f"{rep.expected} (paper Table 1); {fix}, or pass --subset "
                                                    f"for a sample"))
        if shipped is not None and not own and rep.entries == rep.expected:
            theirs = [_entry_key(i) for i in read_annotation_file(Path(rep.source)) if isinstance(i, dict)]
            mine = [_entry_key(i) for i in read_annotation_file(shipped)]
            if sorted(map(str, theirs)) != sorted(map(str, mine)):
                rep.problems.append(Problem(rep.source, f"lists other samples than the card's {rep.split} split "
                                                        f"({shipped.name}); remove it to use the paper's split"))
        return
    if shipped is not None and not own:
        mask_dir = card.mask_dir(rep.split)
        known = {(i["img_name"], f"{mask_dir}/{i['mask_name']}") for i in read_annotation_file(shipped)}
        for e in entries:
            if (e.img_name, e.name) not in known:
                rep.problems.append(Problem(rep.source, f"entry {e.img_name} / {e.name} is not in the card's "
                                                        f"{rep.split} split"))
    notes.append(f"{rep.split}: subset mode, {rep.entries} of {rep.expected} entries (counts not enforced)")


def _check_files(card: DataCard, rep: SplitReport, entries: list[Entry], decoded: dict, stream) -> None:
    progress = Progress(f"{card.name} {rep.split}", len(entries), stream, every=5.0)
    for n, e in enumerate(entries, 1):
        progress(n)
        missing = [(k, p) for k, p in (("image", e.image), ("mask", e.mask)) if not p.is_file()]
        for kind, path in missing:
            if path not in decoded:
                rep.problems.append(Problem(str(path), f"{kind} not found (listed for sample {e.name})"))
                decoded[path] = Problem(str(path), "not found")
        if missing:
            continue
        if e.image not in decoded:
            try:
                decoded[e.image] = decode_image(e.image).shape[:2]
            except DataError as err:
                decoded[e.image] = Problem(str(e.image), _why(err, e.image))
            if isinstance(decoded[e.image], Problem):
                rep.problems.append(decoded[e.image])
        try:
            mask_hw = decode_mask(e.mask, card.mask_threshold, card.max_ambiguous_fraction).shape
        except DataError as err:
            rep.problems.append(Problem(str(e.mask), _why(err, e.mask)))
            mask_hw = None
        hw = decoded[e.image]
        if mask_hw is not None and not isinstance(hw, Problem) and tuple(hw) != tuple(mask_hw):
            rep.problems.append(Problem(str(e.mask), f"mask is {mask_hw[1]}x{mask_hw[0]} (WxH) but its image "
                                                     f"{e.image.name} is {hw[1]}x{hw[0]}; masks must have their "
                                                     f"image's size"))


def _why(err: DataError, path: Path) -> str:
    """The DataError message without the path (the problem line already starts with it)."""
    return str(err).replace(f" {path}", "", 1)


def _check_leaks(card: DataCard, images_of: dict[str, set[Path]], report: CheckReport) -> None:
    names = list(images_of)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for path in sorted(images_of[a] & images_of[b]):
                if path.name in card.known_leaks:
                    report.notes.append(f"known upstream leak kept for fidelity: {path.name} is in {a} and {b}")
                else:
                    report.problems.append(Problem(str(path), f"image is in both {a} and {b} (split leak)"))
