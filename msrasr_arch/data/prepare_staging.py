"""All-or-nothing output for `msrasr prepare`: every output folder and LMDB is built inside one hidden
staging folder next to its final place (same filesystem, so publishing is a rename), and appears only
when everything succeeded. A failure, Ctrl-C included, removes the staging folder; existing outputs
are never touched unless `overwrite` is set."""
import os
import shutil
import uuid

from msrasr_arch.utils.errors import UserError

STAGING_PREFIX = '.msrasr-prepare-'


class Staging:
    """Context manager. `targets` are paths relative to `out_dir`; `path(rel)` is where to build one;
    `publish()` moves them all into place. Leaving the block without `publish()` discards everything."""

    def __init__(self, out_dir, targets, *, overwrite=False, protect=()):
        self.out_dir = os.path.abspath(os.fspath(out_dir))
        self.targets = [os.path.normpath(t) for t in targets]
        self.overwrite = overwrite
        self._created_out_dir = False
        self.root = None
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
        if os.path.exists(self.out_dir) and not os.path.isdir(self.out_dir):
            raise UserError(f'output path is not a folder: {self.out_dir}')

    def __enter__(self):
        if not os.path.isdir(self.out_dir):
            os.makedirs(self.out_dir)
            self._created_out_dir = True
        self.root = os.path.join(self.out_dir, f'{STAGING_PREFIX}{uuid.uuid4().hex[:12]}.tmp')
        os.makedirs(os.path.join(self.root, 'new'))
        return self

    def path(self, rel):
        """Staging location for the target `rel` (its parent folders exist)."""
        staged = os.path.join(self.root, 'new', os.path.normpath(rel))
        os.makedirs(os.path.dirname(staged), exist_ok=True)
        return staged

    def publish(self):
        """Rename the staged targets into `out_dir`. A target's parent that does not exist yet (e.g.
        `DIV2K_train_LR_bicubic/`) moves as a whole, so no half-filled parent is ever visible."""
        units = []
        for rel in self.targets:
            unit, parent = rel, os.path.dirname(rel)
            while parent and not os.path.lexists(os.path.join(self.out_dir, parent)):
                unit, parent = parent, os.path.dirname(parent)
            if unit not in units:
                units.append(unit)
        old_dir = os.path.join(self.root, 'old')
        os.makedirs(old_dir)
        for n, rel in enumerate(self.targets):
            final = os.path.join(self.out_dir, rel)
            if os.path.lexists(final):
                # --overwrite: move the old one aside first; deleted with the staging folder.
                os.replace(final, os.path.join(old_dir, str(n)))
        for unit in units:
            os.replace(os.path.join(self.root, 'new', unit), os.path.join(self.out_dir, unit))

    def __exit__(self, exc_type, exc, tb):
        shutil.rmtree(self.root, ignore_errors=True)
        if exc_type is not None and self._created_out_dir:
            try:
                os.rmdir(self.out_dir)  # only if still empty
            except OSError:
                pass
        return False
