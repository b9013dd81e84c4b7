"""All-or-nothing output for `msrasr prepare`: every output folder and LMDB is built inside one hidden
staging folder next to its final place (same filesystem, so publishing is a rename), and appears only
when everything succeeded. A failure, Ctrl-C included, removes the staging folder; existing outputs
are never touched unless `overwrite` is set.

Publishing takes several renames (the outputs are siblings among the user's own folders, so no single
parent can be renamed). Before the first one, the list of renames is written into the staging folder;
a run killed between them leaves that list behind, and the next run in the same folder finishes the
renames before anything else, so readers never keep half a result. The staging folder of a run that was
killed before publishing is simply removed. A live run holds a lock on its staging folder, so another
run never takes it for a leftover."""
import json
import os
import re
import shutil
import uuid

from msrasr_arch.utils.atomic import atomic_path, lock_folder
from msrasr_arch.utils.errors import UserError

STAGING_PREFIX = '.msrasr-prepare-'
_STAGING_NAME = re.compile(r'^' + re.escape(STAGING_PREFIX) + r'[0-9a-f]{12}\.tmp$')
_PLAN = 'publish.json'


def _apply(root, out_dir, plan):
    """Carry out `plan` (see Staging.publish). Idempotent: a rename already done is skipped, so a run
    killed half-way is finished by calling this again."""
    for rel, n in plan['old']:
        aside = os.path.join(root, 'old', str(n))
        if not os.path.lexists(aside) and os.path.lexists(os.path.join(out_dir, rel)):
            os.replace(os.path.join(out_dir, rel), aside)
    for unit in plan['new']:
        staged, final = os.path.join(root, 'new', unit), os.path.join(out_dir, unit)
        if not os.path.lexists(staged):
            continue  # published already
        if os.path.lexists(final):
            raise UserError(f'cannot finish publishing {final} from {root}: something else was put there '
                            'since; move it away and run again')
        os.replace(staged, final)


def _finish(root, out_dir):
    """Complete the publishing recorded in `root`, if any, then delete `root`."""
    plan_path = os.path.join(root, _PLAN)
    if os.path.exists(plan_path):
        try:
            with open(plan_path, encoding='utf-8') as f:
                plan = json.load(f)
        except (OSError, ValueError) as err:
            raise UserError(f'cannot read {plan_path} (left by an interrupted run): {err}') from None
        _apply(root, out_dir, plan)
        os.remove(plan_path)  # from here on, what is left in root is garbage
    shutil.rmtree(root, ignore_errors=True)


def finish_interrupted(out_dir):
    """Deal with the staging folders that killed runs left in `out_dir`: finish the ones that were
    publishing, delete the others. Folders of runs still alive (locked) are left alone. Returns the
    folders handled."""
    handled = []
    if not os.path.isdir(out_dir):
        return handled
    for name in sorted(os.listdir(out_dir)):
        root = os.path.join(out_dir, name)
        if not _STAGING_NAME.match(name) or not os.path.isdir(root) or os.path.islink(root):
            continue
        try:
            lock = lock_folder(root, exclusive=True)
        except BlockingIOError:
            continue  # another run is using it right now
        try:
            _finish(root, out_dir)
        finally:
            if lock is not None:
                os.close(lock)
        handled.append(root)
    return handled


class Staging:
    """Context manager. `targets` are paths relative to `out_dir`; `path(rel)` is where to build one;
    `publish()` moves them all into place. Leaving the block without `publish()` discards everything."""

    def __init__(self, out_dir, targets, *, overwrite=False, protect=()):
        self.out_dir = os.path.abspath(os.fspath(out_dir))
        self.targets = [os.path.normpath(t) for t in targets]
        self.overwrite = overwrite
        self._created_out_dir = False
        self.root = None
        self._lock = None
        if os.path.exists(self.out_dir) and not os.path.isdir(self.out_dir):
            raise UserError(f'output path is not a folder: {self.out_dir}')
        # Before looking at what exists: a killed run's half-published outputs are completed first.
        finish_interrupted(self.out_dir)
        protect = [os.path.realpath(p) for p in protect]
        for rel in self.targets:
            final = os.path.join(self.out_dir, rel)
            real = os.path.realpath(final)
            for p in protect:
                # Overwriting a folder that holds (or is) the input would delete the input.
                if p == real or p.startswith(real + os.sep):
                    raise UserError(f'output {final} would replace the input folder {p}; choose another --out')
            if os.path.lexists(final) and not overwrite:
                raise UserError(f'{final} already exists; pass --overwrite to replace it')

    def __enter__(self):
        if not os.path.isdir(self.out_dir):
            os.makedirs(self.out_dir)
            self._created_out_dir = True
        self.root = os.path.join(self.out_dir, f'{STAGING_PREFIX}{uuid.uuid4().hex[:12]}.tmp')
        os.makedirs(os.path.join(self.root, 'new'))
        # Shared, not exclusive: it already keeps another run's non-blocking exclusive probe off this
        # folder, and our own atomic writes inside it take a shared lock on it too (an exclusive one here
        # would make them wait for ourselves).
        self._lock = lock_folder(self.root, exclusive=False)
        return self

    def path(self, rel):
        """Staging location for the target `rel` (its parent folders exist)."""
        staged = os.path.join(self.root, 'new', os.path.normpath(rel))
        os.makedirs(os.path.dirname(staged), exist_ok=True)
        return staged

    def publish(self):
        """Rename the staged targets into `out_dir`. A target's parent that does not exist yet (e.g.
        `DIV2K_train_LR_bicubic/`) moves as a whole, so no half-filled parent is ever visible. With
        `overwrite`, existing targets are first moved aside into the staging folder (deleted with it)."""
        units = []
        for rel in self.targets:
            unit, parent = rel, os.path.dirname(rel)
            while parent and not os.path.lexists(os.path.join(self.out_dir, parent)):
                unit, parent = parent, os.path.dirname(parent)
            if unit not in units:
                units.append(unit)
        old = [(rel, n) for n, rel in enumerate(self.targets) if os.path.lexists(os.path.join(self.out_dir, rel))]
        os.makedirs(os.path.join(self.root, 'old'))
        with atomic_path(os.path.join(self.root, _PLAN)) as tmp:
            with open(tmp, 'w', encoding='utf-8') as f:
                json.dump({'old': old, 'new': units}, f)
        # From here on, a run killed between two renames is finished by the next run (finish_interrupted).
        _apply(self.root, self.out_dir, {'old': old, 'new': units})
        os.remove(os.path.join(self.root, _PLAN))

    def __exit__(self, exc_type, exc, tb):
        try:
            if os.path.exists(os.path.join(self.root, _PLAN)):
                # Interrupted between renames (Ctrl-C, an error): finish them, since the old outputs are
                # already aside; if even that fails, the plan stays for the next run to finish.
                _finish(self.root, self.out_dir)
            else:
                shutil.rmtree(self.root, ignore_errors=True)
        finally:
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None
        if exc_type is not None and self._created_out_dir:
            try:
                os.rmdir(self.out_dir)  # only if still empty
            except OSError:
                pass
        return False
