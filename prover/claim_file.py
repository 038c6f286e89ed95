"""Bring your own claim: an attribution (c, a) from a file, served by an honest prover.

``prover serve --attribution FILE`` serves any linear datamodel, e.g. one exported from TRAK or
dattri, and answers the verifier's challenges honestly by retraining: the verifier, unchanged,
judges whether the claim is ε-optimal. Formats, one row per target:

* ``.npz`` with ``intercepts`` (Z,) and ``coefficients`` (Z, N); optional ``task_hash`` (a string:
  the file is refused for any other task) and ``num_samples`` (retrainings behind the claim);
* ``.npy`` of shape (Z, N + 1): N coefficients, then the intercept;
* ``.csv`` (comma-separated numbers, no header) of the same shape.

``basis`` says what the coefficients multiply: ``pm1`` (the protocol's x = 2·mask − 1, the
default) or ``mask`` (the 0/1 inclusion indicator most tools export: g = c₀ + Σ β_i m_i, which is
c₀ + Σ β_i/2 + Σ (β_i/2) x_i). Every refusal is a ``ValueError`` naming the file and the problem
(the CLI exits 2 with it).
"""

from __future__ import annotations

import enum
from pathlib import Path

import numpy as np

from protocol.claim import MAX_MAGNITUDE
from protocol.tasks.base import Task
from prover.strategy import Attribution


class Basis(enum.Enum):
    """What a file's coefficients multiply."""

    PM1 = "pm1"
    MASK = "mask"


#: Largest claim file read (Z × N float64 at Z = 10, N = 60,000 is 4.8 MB; CSV text ~4× that).
MAX_CLAIM_FILE_BYTES = 512 * 1024 * 1024


def _read(path: Path) -> tuple[np.ndarray, np.ndarray, str | None, int]:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            missing = {"intercepts", "coefficients"} - set(npz.files)
            if missing:
                raise ValueError(f"lacks {', '.join(sorted(missing))} (has {sorted(npz.files)})")
            c = np.asarray(npz["intercepts"], dtype=np.float64)
            a = np.asarray(npz["coefficients"], dtype=np.float64)
            task_hash = str(npz["task_hash"]) if "task_hash" in npz.files else None
            samples = int(npz["num_samples"]) if "num_samples" in npz.files else 0
        return c, a, task_hash, samples
    if suffix == ".npy":
        rows = np.load(path, allow_pickle=False)
    elif suffix == ".csv":
        rows = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
    else:
        raise ValueError("must end in .npz, .npy or .csv")
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim == 1:
        rows = rows[None, :]
    if rows.ndim != 2 or rows.shape[1] < 2:
        raise ValueError(f"must hold one row per target of N coefficients and an intercept, got "
                         f"shape {rows.shape}")  # fmt: skip
    return rows[:, -1].copy(), rows[:, :-1].copy(), None, 0


def load_attribution_file(
    path: str | Path, task: Task, basis: Basis | str = Basis.PM1
) -> Attribution:
    """The claim in ``path`` for ``task``, in the protocol's ±1 basis. ``ValueError`` for a file
    that is missing, unreadable, of the wrong shape, non-finite, too large in magnitude, or
    marked for another task."""
    basis = Basis(basis)
    p = Path(path).expanduser()
    where = f"--attribution {str(p)!r}"
    if not p.is_file():
        raise ValueError(f"{where} does not exist")
    if p.stat().st_size > MAX_CLAIM_FILE_BYTES:
        raise ValueError(f"{where} is larger than {MAX_CLAIM_FILE_BYTES:,} bytes")
    try:
        c, a, task_hash, samples = _read(p)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    except (OSError, KeyError, TypeError) as exc:
        raise ValueError(f"{where}: cannot read it: {exc}") from exc
    z, n = task.num_targets, task.num_train_points
    if task_hash is not None and task_hash != task.identity().task_hash:
        raise ValueError(
            f"{where} was made for task hash {task_hash[:16]}…, not this task's "
            f"{task.identity().task_hash[:16]}… ({task.selector})"
        )
    if c.shape != (z,) or a.shape != (z, n):
        raise ValueError(
            f"{where} holds {a.shape[0] if a.ndim == 2 else '?'} targets × "
            f"{a.shape[-1] if a.ndim else '?'} coefficients; task {task.selector!r} needs "
            f"{z} × {n} (one row per target, N coefficients plus an intercept)"
        )
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(c))):
        raise ValueError(f"{where} contains NaN or infinity")
    if basis is Basis.MASK:
        c = c + a.sum(axis=1) / 2.0
        a = a / 2.0
    if np.any(np.abs(a) > MAX_MAGNITUDE) or np.any(np.abs(c) > MAX_MAGNITUDE):
        raise ValueError(f"{where} has a number above {MAX_MAGNITUDE:g} in magnitude")
    return Attribution(
        intercepts=np.ascontiguousarray(c),
        coefficients=np.ascontiguousarray(a),
        method=f"file {p.name}",
        num_samples=int(samples),
    )


def save_attribution_file(path: str | Path, attribution: Attribution, task: Task) -> Path:
    """Write ``attribution`` (±1 basis) as ``path`` (.npz with the task hash, .npy or .csv)."""
    p = Path(path)
    c = np.asarray(attribution.intercepts, dtype=np.float64)
    a = np.asarray(attribution.coefficients, dtype=np.float64)
    suffix = p.suffix.lower()
    if suffix == ".npz":
        np.savez(
            p,
            intercepts=c,
            coefficients=a,
            task_hash=np.array(task.identity().task_hash),
            num_samples=np.array(int(attribution.num_samples)),
        )
    elif suffix == ".npy":
        np.save(p, np.hstack([a, c[:, None]]))
    elif suffix == ".csv":
        np.savetxt(p, np.hstack([a, c[:, None]]), delimiter=",", fmt="%.17g")
    else:
        raise ValueError(f"{p}: must end in .npz, .npy or .csv")
    return p
