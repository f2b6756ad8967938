"""Latency from a device's lookup table: stem + each layer's entry + head, for many
architectures at once; gaps filled by the operator predictor; then the device's calibration.

Each layer's table is an array indexed by (candidate, input width choice, output width
choice), so scoring a batch of architectures is a handful of NumPy gathers. An entry the
table lacks is NaN there and is reported by key, never read as zero.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import overload

import numpy as np

from hurricane.arch import Arch
from hurricane.calibration import Calibration
from hurricane.errors import UserError
from hurricane.lut import LutDB
from hurricane.lutkeys import PAIR_OP, OpInstance, is_pair_key, pair_key
from hurricane.op_predictor import OpPredictor, record_from_instance
from hurricane.space import SearchSpace

USABLE = ("ok", "noisy")  # noisy entries are measurements too, only flagged


def space_ref(space: SearchSpace) -> str:
    """How to name ``space`` on a command line: its file, or a built-in's name."""
    return space.source if Path(space.source).is_file() else space.name


class MissingEntries(UserError):
    """Latency entries a prediction needs that the table does not have."""

    def __init__(self, keys: list[str], hint: str) -> None:
        shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        super().__init__(f"{len(keys)} latency entries missing ({shown}); {hint}")
        self.keys = keys


class LutPredictor:
    """Scores architectures of ``space`` from ``table`` (LUT key -> median ms)."""

    def __init__(self, space: SearchSpace, table: dict[str, float], device: str = "") -> None:
        self.space, self.device = space, device
        self.hint = (
            f"fill them with: hurricane profile --space {space_ref(space)} "
            f"--device {device or 'SPEC'}"
        )
        self._keys: list[np.ndarray] = []  # per layer: object array of keys, for messages
        self.tables: list[np.ndarray] = []
        cin_choices = [space.stem.cout]
        for i, layer in enumerate(space.layers):
            couts = layer.channels(space.channel_divisor)
            h, w = space.input_shape(i)
            tab = np.full((len(layer.ops), len(cin_choices), len(couts)), np.nan)
            keys = np.empty(tab.shape, dtype=object)
            for o, op in enumerate(layer.ops):
                act = space.layer_act(i, op)
                for a, cin in enumerate(cin_choices):
                    for b, cout in enumerate(couts):
                        key = OpInstance(op, cin, cout, h, w, layer.stride, act).key
                        keys[o, a, b] = key
                        tab[o, a, b] = table.get(key, np.nan)
            self.tables.append(tab)
            self._keys.append(keys)
            cin_choices = list(couts)
        self.stem_key = space.stem_instance().key
        self.stem = table.get(self.stem_key, np.nan)
        heads = space.head_instances()
        by_cin = {inst.cin: inst.key for inst in heads}
        self.head_keys = [by_cin[c] for c in cin_choices]
        self.head = np.array([table.get(k, np.nan) for k in self.head_keys])
        self._op_index = [{op: j for j, op in enumerate(layer.ops)} for layer in space.layers]
        self.pairs = self._pair_corrections(table)
        self._w_index = [{w: j for j, w in enumerate(layer.widths)} for layer in space.layers]

    def _pair_corrections(self, table: dict[str, float]) -> dict[int, tuple[int, np.ndarray]]:
        """Per layer with a strided skip: (skip's op index, correction) indexed by (op before,
        its cin, its cout, skip's cout); 0 where no pair was timed, so a table without pairs
        (a runtime that does not fuse across layers) gives the plain sum.

        A pair is one call where its parts are two, with one tensor fewer handed across: that
        saving is the same for every op at the same widths, and a whole model has it anyway, so
        the correction is a pair's saving beyond the median saving of its widths. Timed as is,
        a pair on the demo space (ops of ~10 us) looked 40% cheaper for every op, and
        calibration could no longer fit the models without one."""
        out = {}
        for i in self.space.pair_layers():
            skip = self._op_index[i][PAIR_OP]
            first, second = self._keys[i - 1], self._keys[i][skip]
            saving = np.full(first.shape + second.shape[1:], np.nan)
            for (o, a, b), k1 in np.ndenumerate(first):
                for c, k2 in enumerate(second[b]):
                    v = table.get(pair_key(k1, k2))
                    if v is not None:
                        parts = self.tables[i - 1][o, a, b] + self.tables[i][skip, b, c]
                        saving[o, a, b, c] = v - parts
            timed = ~np.isnan(saving)
            if not timed.any():
                continue
            typical = np.zeros(saving.shape[1:])
            some = timed.any(0)
            typical[some] = np.nanmedian(saving[:, some], axis=0)
            out[i] = (skip, np.where(timed, saving - typical, 0.0))
        return out

    @classmethod
    def from_db(cls, space: SearchSpace, db_path: str | Path, device: str) -> LutPredictor:
        return cls(space, read_table(space, db_path, device), device)

    def needed(self) -> int:
        """How many operator instances (stem, layer entries, heads) the space needs."""
        keys = {self.stem_key, *self.head_keys}
        for k in self._keys:
            keys.update(k.ravel().tolist())
        return len(keys)

    def missing(self) -> list[str]:
        """Every key of the space this table lacks."""
        out = [self.stem_key] if np.isnan(self.stem) else []
        for tab, keys in zip(self.tables, self._keys):
            out.extend(keys[np.isnan(tab)].tolist())
        out.extend(k for k, v in zip(self.head_keys, self.head) if np.isnan(v))
        return out

    def encode(self, archs: Sequence[Arch]) -> tuple[np.ndarray, np.ndarray]:
        """(op index, width index) arrays of shape (N, layers)."""
        n, layers = len(archs), len(self.space.layers)
        ops = np.empty((n, layers), dtype=np.intp)
        widths = np.empty((n, layers), dtype=np.intp)
        for r, arch in enumerate(archs):
            try:
                self._encode_row(arch, ops[r], widths[r])
            except (KeyError, IndexError, ValueError):
                # Not in canonical form (an FBNet alias, say) or not in the space:
                # validation canonicalises it or raises saying which layer is wrong.
                self._encode_row(self.space.validate_arch(arch), ops[r], widths[r])
        return ops, widths

    def _encode_row(self, arch: Arch, ops: np.ndarray, widths: np.ndarray) -> None:
        if len(arch.ops) != len(self._op_index):
            raise ValueError("layer count")
        for i, (op, w) in enumerate(zip(arch.ops, arch.widths)):
            ops[i] = self._op_index[i][op]
            widths[i] = self._w_index[i][w]

    def predict_indices(self, ops: np.ndarray, widths: np.ndarray) -> np.ndarray:
        n = ops.shape[0]
        total = np.full(n, self.stem, dtype=float)
        cin = prev_cin = np.zeros(n, dtype=np.intp)
        for i, tab in enumerate(self.tables):
            total += tab[ops[:, i], cin, widths[:, i]]
            if i in self.pairs:
                skip, corr = self.pairs[i]
                m = ops[:, i] == skip
                total[m] += corr[ops[m, i - 1], prev_cin[m], widths[m, i - 1], widths[m, i]]
            prev_cin, cin = cin, widths[:, i]
        total += self.head[cin]
        if np.isnan(total).any():
            raise MissingEntries(self._missing_for(ops, widths, np.isnan(total)), self.hint)
        return total

    @overload
    def predict(self, archs: Arch) -> float: ...
    @overload
    def predict(self, archs: Sequence[Arch]) -> np.ndarray: ...
    def predict(self, archs: Sequence[Arch] | Arch) -> np.ndarray | float:
        """Predicted latency (ms) of one architecture or an array for a sequence."""
        single = isinstance(archs, Arch)
        ops, widths = self.encode([archs] if isinstance(archs, Arch) else archs)
        out = self.predict_indices(ops, widths)
        return float(out[0]) if single else out

    def fastest(
        self, layers: Sequence[int] | None = None, fixed: Arch | None = None
    ) -> tuple[float, Arch]:
        """The lowest LUT sum in the space and its architecture (layers outside ``layers``
        taken from ``fixed``): dynamic programming over each layer's output width, since a
        layer's cost depends on the width before it. Pair savings (a strided skip timed with
        the layer before) are left out of the search and added to the figure returned."""
        space = self.space
        base = fixed or space.default_arch()
        free = set(range(len(space.layers)) if layers is None else layers)
        best = np.array([self.stem])  # cost so far for each width choice of the last layer
        choice: list[np.ndarray] = []  # per layer: (op, from-width) behind each width
        for i, tab in enumerate(self.tables):
            layer = space.layers[i]
            ops = range(len(layer.ops)) if i in free else [self._op_index[i][base.ops[i]]]
            widths = range(len(layer.widths)) if i in free else [self._w_index[i][base.widths[i]]]
            cost = np.full(len(layer.widths), np.inf)
            back = np.zeros((len(layer.widths), 2), dtype=np.intp)
            for b in widths:
                for o in ops:
                    total = best + np.nan_to_num(tab[o, :, b], nan=np.inf)
                    a = int(np.argmin(total))
                    if total[a] < cost[b]:
                        cost[b], back[b] = total[a], (o, a)
            best = cost
            choice.append(back)
        final = best + np.nan_to_num(self.head, nan=np.inf)
        b = int(np.argmin(final))
        ms = float(final[b])
        ops_out, widths_out = [], []
        for i in reversed(range(len(space.layers))):
            o, a = choice[i][b]
            ops_out.append(space.layers[i].ops[o])
            widths_out.append(space.layers[i].widths[b])
            b = a
        arch = Arch(tuple(reversed(ops_out)), tuple(reversed(widths_out)))
        if self.pairs:
            ms = float(self.predict(arch))
        return ms, arch

    def typical(self) -> Arch:
        """Per layer the op of median latency (at the widest widths) and the middle width:
        a neutral setting for layers a stage does not search, leaving budget both ways."""
        ops, widths = [], []
        for layer, tab in zip(self.space.layers, self.tables):
            at_max = np.nan_to_num(tab[:, -1, -1], nan=np.inf)
            ops.append(layer.ops[int(np.argsort(at_max)[(len(at_max) - 1) // 2])])
            widths.append(sorted(layer.widths)[(len(layer.widths) - 1) // 2])
        return Arch(tuple(ops), tuple(widths))

    def _missing_for(self, ops: np.ndarray, widths: np.ndarray, bad: np.ndarray) -> list[str]:
        keys: dict[str, None] = {}
        if np.isnan(self.stem):
            keys[self.stem_key] = None
        for r in np.flatnonzero(bad):
            cin = 0
            for i, (tab, kt) in enumerate(zip(self.tables, self._keys)):
                if np.isnan(tab[ops[r, i], cin, widths[r, i]]):
                    keys[kt[ops[r, i], cin, widths[r, i]]] = None
                cin = widths[r, i]
            if np.isnan(self.head[cin]):
                keys[self.head_keys[cin]] = None
        return list(keys)


def read_table(space: SearchSpace, db_path: str | Path, device: str) -> dict[str, float]:
    """A device's usable LUT entries: key -> median ms."""
    if not Path(db_path).exists():
        raise UserError(
            f"{db_path}: no such LUT database; run hurricane profile --space "
            f"{space_ref(space)} --device {device} --db {db_path}"
        )
    with LutDB(db_path, readonly=True) as db:
        try:
            dev = db.device_id(device)
        except KeyError:
            raise UserError(
                f"{db_path}: no latency table for device {device!r}; run "
                f"hurricane profile --space {space_ref(space)} --device {device} --db {db_path}"
            ) from None
        return {e.key: e.median_ms for e in db.entries(dev, USABLE) if e.median_ms is not None}


class MostlyPredicted(UserError):
    """Most of what a command needs would be the operator predictor's, and it was told to
    require measured latencies (``--require-measured``)."""


def predicted_note(
    space: SearchSpace,
    db_path: str | Path,
    device: str,
    device_ref: str | None = None,
    require: bool = False,
) -> str | None:
    """None while at least half of the operator instances ``space`` needs are measured on
    ``device`` (usable entries); else one line with the figures and the exact ``hurricane
    profile`` command that measures them (``device_ref``: the spec as the user named it),
    or, with ``require``, ``MostlyPredicted`` saying the same. A LUT profiled for another
    space fills a space's every gap from the op predictor, and nothing else would say so.
    Too few measured to predict from, the filling refuses with its own line
    (``fill_missing``), so this one says nothing."""
    table = read_table(space, db_path, device)
    lut = LutPredictor(space, table, device)
    missing, needed = set(lut.missing()), lut.needed()
    if 2 * len(missing) <= needed or len(table) < MIN_TO_LEARN:
        return None
    with LutDB(db_path, readonly=True) as db:
        failed = missing & {e.key for e in db.entries(db.device_id(device), ["error"])}
    command = shlex.join(
        ["hurricane", "profile", "--space", space_ref(space), "--device", device_ref or device]
        + ["--db", str(db_path)]
        + (["--retry-errors"] if failed else [])
    )
    figures = (
        f"{len(missing)} of {needed} operator instances space {space.name} needs on {device} "
        f"are predicted, not measured"
        + (f" ({len(failed)} of them failed to measure)" if failed else "")
    )
    if require:
        raise MostlyPredicted(
            f"{db_path}: {figures}, and --require-measured refuses that; measure them: {command}"
        )
    return (
        f"warning: {figures} in {db_path}: what follows rests on the operator predictor's "
        f"guesses; measure them: {command}"
    )


MIN_TO_LEARN = 20  # fewer measured entries than this teach the operator predictor too little


def fill_missing(
    space: SearchSpace, table: dict[str, float], device: str = "", seed: int = 0
) -> tuple[dict[str, float], list[str]]:
    """The table with every entry ``space`` needs: gaps predicted by an ``OpPredictor``
    trained on the measured entries. Returns (table, keys that were predicted)."""
    missing = LutPredictor(space, table, device).missing()
    if not missing:
        return table, []
    if len(table) < MIN_TO_LEARN:
        raise MissingEntries(
            missing,
            LutPredictor(space, {}, device).hint
            + (f" (only {len(table)} entries measured: too few to predict the rest)"),
        )
    keys = [k for k in table if not is_pair_key(k)]  # a pair is two operators, not one
    model = OpPredictor(seed=seed).fit(
        [record_from_instance(OpInstance.from_key(k)) for k in keys], [table[k] for k in keys]
    )
    guesses = model.predict([record_from_instance(OpInstance.from_key(k)) for k in missing])
    return {**table, **dict(zip(missing, map(float, guesses)))}, missing


class LatencyModel:
    """What the search asks for: LUT sum (gaps filled by the operator predictor), corrected
    by the device's model-level calibration when one was fitted."""

    def __init__(
        self,
        lut: LutPredictor,
        calibration: Calibration | None = None,
        predicted: Sequence[str] = (),
    ) -> None:
        self.lut, self.calibration, self.predicted_keys = lut, calibration, list(predicted)

    @classmethod
    def from_db(
        cls, space: SearchSpace, db_path: str | Path, device: str, fill: bool = True
    ) -> LatencyModel:
        """The device's table, filled if ``fill``, with the latest calibration stored for this
        space's structure (by ``hurricane latency validate``), if any."""
        table = read_table(space, db_path, device)
        predicted: list[str] = []
        if fill:
            table, predicted = fill_missing(space, table, device)
        lut = LutPredictor(space, table, device)
        calibration = None
        with LutDB(db_path, readonly=True) as db:
            for row in reversed(db.validations(db.device_id(device))):
                res = row["result"]
                if res.get("space_hash") == space.structure_hash() and res.get("calibration"):
                    calibration = Calibration(**res["calibration"])
                    break
        return cls(lut, calibration, predicted)

    @overload
    def predict_sum(self, archs: Arch) -> float: ...
    @overload
    def predict_sum(self, archs: Sequence[Arch]) -> np.ndarray: ...
    def predict_sum(self, archs: Sequence[Arch] | Arch) -> np.ndarray | float:
        return self.lut.predict(archs)

    @overload
    def predict(self, archs: Arch) -> float: ...
    @overload
    def predict(self, archs: Sequence[Arch]) -> np.ndarray: ...
    def predict(self, archs: Sequence[Arch] | Arch) -> np.ndarray | float:
        summed = self.lut.predict(archs)
        return self.calibration(summed) if self.calibration else summed

    def fastest(
        self, layers: Sequence[int] | None = None, fixed: Arch | None = None
    ) -> tuple[float, Arch]:
        ms, arch = self.lut.fastest(layers, fixed)
        return (float(self.calibration(ms)) if self.calibration else ms), arch
