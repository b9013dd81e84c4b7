"""`basicsr train` / `basicsr test` against hostile or broken input: a disk that fills up mid-save, option
files and flags that try to run code, training states that carry code, options that are wrong in the ways
people get them wrong, built-in option names, and what killed saves leave behind.

The pipelines run in this process on a tiny network (embed_dim 12, one stage of 2 layers) and a handful
of 48x48 crops; every wrong-option case stops before BasicSR creates a folder, so those take milliseconds.
"""
import ast
import contextlib
import errno
import glob
import io
import os
import pickle
import sys

import pytest
import torch
import yaml

from msrasr_arch.cli import basicsr_cmd

from sr_cli import OPTIONS
from sr_tiny_data import make_tiny_sr_set

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, 'msrasr_arch')
OUTPUT_FOLDERS = ('experiments', 'tb_logger', 'results')


@pytest.fixture(scope='module')
def dirs(tmp_path_factory):
    return make_tiny_sr_set(str(tmp_path_factory.mktemp('data')), scale=2)


def tiny_options(dirs, name='tiny', total_iter=4, save_freq=2):
    """The packaged x2 option file, pointed at the tiny data set and shrunk to a ~13K-parameter network."""
    with open(os.path.join(OPTIONS, 'train_MSRASR_x2.yml'), encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    opt.update(name=name, num_gpu=0)
    opt['datasets']['train'].update(dataroot_gt=dirs['train_hr'], dataroot_lq=dirs['train_lr'], gt_size=32,
                                    io_backend={'type': 'disk'}, batch_size_per_gpu=2, num_worker_per_gpu=0)
    opt['datasets']['val'].update(dataroot_gt=dirs['test_hr'], dataroot_lq=dirs['test_lr'])
    opt['network_g'].update(embed_dim=12, depths=[2], num_heads=[2], window_size=8, csa_dim=4, mlp_ratio=2)
    opt['train']['total_iter'] = total_iter
    opt['val']['val_freq'] = total_iter
    opt['logger'].update(save_checkpoint_freq=save_freq, print_freq=1, use_tb_logger=False)
    return opt


def write_options(folder, opt, filename=None):
    path = os.path.join(str(folder), filename or f'{opt["name"]}.yml')
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return path


@contextlib.contextmanager
def in_folder(folder):
    """Run the `basicsr` command in this process with `folder` as the working directory (BasicSR's
    parse_options reads sys.argv, which the command rewrites)."""
    saved_cwd, saved_argv = os.getcwd(), list(sys.argv)
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv


def run(args, folder):
    """(exit status, stderr) of `basicsr ARGS` run in `folder`."""
    err = io.StringIO()
    with in_folder(folder), contextlib.redirect_stderr(err):
        status = basicsr_cmd.main(list(args))
    return status, err.getvalue()


def error_line(status, err, prog='basicsr train'):
    """The command's one error line; fails unless it exited non-zero with exactly one, no traceback."""
    assert status != 0, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith(f'{prog}: error:')]
    assert len(errors) == 1 and 'Traceback' not in err, err[-3000:]
    return errors[0]


def no_output_folders(folder):
    return not [name for name in OUTPUT_FOLDERS if os.path.exists(os.path.join(str(folder), name))]


def readable(path):
    """A published checkpoint or state opens with weights_only=True."""
    obj = torch.load(path, map_location='cpu', weights_only=True)
    return isinstance(obj, dict) and len(obj) > 0


class _RunsShell:
    """Unpickling this calls os.system: the classic checkpoint payload."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


# --- 1. a full disk during a save -------------------------------------------------------------------------


def _disk_fills_after(good_writes):
    """A torch.save that behaves for `good_writes` calls, then writes half of what it was given and
    fails with ENOSPC, as a full disk does."""
    real_save = torch.save
    calls = {'n': 0}

    def save(obj, f, *args, **kwargs):
        calls['n'] += 1
        if calls['n'] <= good_writes:
            return real_save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()[:len(buf.getvalue()) // 2]
        if isinstance(f, (str, os.PathLike)):
            with open(f, 'wb') as out:
                out.write(data)
        else:
            f.write(data)
        raise OSError(errno.ENOSPC, 'No space left on device')

    return save


@pytest.fixture(scope='module')
def disk_full_run(dirs, tmp_path_factory):
    """Train 4 iterations with checkpoints at 2 and 4; the disk fills up after the first checkpoint
    (net_g_2.pth and 2.state, two torch.save calls)."""
    work = tmp_path_factory.mktemp('diskfull')
    opt_file = write_options(work, tiny_options(dirs, name='full'))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, 'save', _disk_fills_after(2))
        status, err = run(['train', '-opt', opt_file], work)
    return work, opt_file, status, err


def test_failed_save_stops_training_with_one_line_and_keeps_last_good_checkpoint(disk_full_run):
    work, _, status, err = disk_full_run
    line = error_line(status, err)
    assert 'net_g_4.pth' in line and 'No space left on device' in line
    exp = work / 'experiments' / 'full'
    assert sorted(os.listdir(exp / 'models')) == ['net_g_2.pth']  # nothing half-written under a final name
    assert sorted(os.listdir(exp / 'training_states')) == ['2.state']
    assert readable(exp / 'models' / 'net_g_2.pth') and readable(exp / 'training_states' / '2.state')


@pytest.fixture(scope='module')
def resumed_run(disk_full_run):
    """After the failure: a truncated 6.state, a 5.state that carries code, and the debris a killed save
    leaves (a staging folder, a temporary file); then `--auto_resume`."""
    work, opt_file, _, _ = disk_full_run
    exp = work / 'experiments' / 'full'
    good = (exp / 'training_states' / '2.state').read_bytes()
    (exp / 'training_states' / '6.state').write_bytes(good[:len(good) // 2])
    torch.save({'iter': 5, 'payload': _RunsShell('touch pwned_by_state')}, exp / 'training_states' / '5.state')
    (exp / 'models' / '.saving-abc123').mkdir()
    (exp / 'models' / '.saving-abc123' / 'net_g_3.pth').write_bytes(b'\0' * 10)
    (exp / 'training_states' / '.3.partial-0badf00d.state').write_bytes(b'\0' * 10)
    status, err = run(['train', '-opt', opt_file, '--auto_resume'], work)
    return work, exp, status, err


def test_auto_resume_skips_unreadable_states_and_resumes_from_newest_good_one(resumed_run):
    work, exp, status, err = resumed_run
    assert status == 0, err[-3000:]
    warnings = [line for line in err.splitlines() if 'warning' in line and 'skipping' in line]
    assert any('6.state' in line for line in warnings) and any('5.state' in line for line in warnings), err[-3000:]
    assert not (work / 'pwned_by_state').exists()
    # resumed (a fresh start would have archived the folder) and finished the run
    assert not glob.glob(str(work / 'experiments' / 'full_archived_*'))
    state = torch.load(exp / 'training_states' / '4.state', weights_only=True)
    assert state['iter'] == 4
    for path in glob.glob(str(exp / 'models' / '*.pth')) + [str(exp / 'training_states' / '4.state')]:
        assert readable(path), path


def test_leftovers_of_killed_saves_are_removed_on_the_next_run(resumed_run):
    _, exp, status, err = resumed_run
    assert status == 0, err[-3000:]
    for folder in ('models', 'training_states'):
        assert not [n for n in os.listdir(exp / folder) if n.startswith('.')], os.listdir(exp / folder)


# --- 2. option files and --force_yml never run code -------------------------------------------------------


@pytest.mark.parametrize('flag', ['-opt', '-op', '-o'])
def test_option_file_is_read_safely_whatever_the_flag_spelling(tmp_path, flag):
    evil = tmp_path / 'evil.yml'
    evil.write_text('name: !!python/object/apply:os.system ["touch pwned"]\nmodel_type: MSRASRModel\n')
    status, err = run(['train', flag, str(evil)], tmp_path)
    assert status != 0
    assert not (tmp_path / 'pwned').exists()
    line = error_line(status, err)
    assert ('evil.yml' in line) if flag == '-opt' else (flag in line)
    assert no_output_folders(tmp_path)


@pytest.mark.parametrize('entry', [
    'logger:print_freq=[__import__("os").system("touch pwned")]',
    'name=__import__("os").system("touch pwned")',
    'logger:x"+str(__import__("os").system("touch pwned"))+"=1',  # code in the key, not the value
])
def test_force_yml_values_are_yaml_never_evaluated(dirs, tmp_path, entry):
    opt_file = write_options(tmp_path, tiny_options(dirs))
    status, err = run(['train', '-opt', opt_file, '--force_yml', entry], tmp_path)
    assert not (tmp_path / 'pwned').exists()
    error_line(status, err)
    assert no_output_folders(tmp_path)


def test_force_yml_parses_yaml_scalars_and_lists():
    from msrasr_arch.utils.errors import UserError
    from msrasr_arch.utils.train_options import apply_forced

    opt = {'train': {'optim_g': {'lr': 1.0}}, 'val': {}, 'path': {'resume_state': 'x'}}
    apply_forced(opt, ['train:optim_g:lr=1e-4', 'val:tile=[256, 32]', 'path:resume_state=~', 'val:save_img=true',
                       'val:label="a b"', 'val:filename_tmpl={}x2'], source='x.yml')
    assert opt == {'train': {'optim_g': {'lr': 1e-4}}, 'path': {'resume_state': None},
                   'val': {'tile': [256, 32], 'save_img': True, 'label': 'a b', 'filename_tmpl': '{}x2'}}
    with pytest.raises(UserError, match='not valid YAML'):
        apply_forced(opt, ['val:tile=[256, 32'], source='x.yml')


# --- 3. training states are loaded as data only -----------------------------------------------------------


def test_every_torch_load_in_the_package_passes_weights_only():
    offenders = []
    for path in glob.glob(os.path.join(PACKAGE, '**', '*.py'), recursive=True):
        with open(path, encoding='utf-8') as f:
            tree = ast.parse(f.read(), filename=path)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == 'load'
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == 'torch'):
                flags = {k.arg: k.value for k in node.keywords}
                value = flags.get('weights_only')
                if not (isinstance(value, ast.Constant) and value.value is True):
                    offenders.append(f'{os.path.relpath(path, REPO)}:{node.lineno}')
    assert not offenders, offenders


def test_training_state_that_carries_code_is_refused_in_one_line(dirs, tmp_path):
    evil = tmp_path / 'evil.state'
    torch.save({'iter': 2, 'epoch': 0, 'optimizers': [], 'schedulers': [], 'x': _RunsShell('touch pwned')}, evil)
    opt = tiny_options(dirs)
    opt['path']['resume_state'] = str(evil)
    status, err = run(['train', '-opt', write_options(tmp_path, opt)], tmp_path)
    line = error_line(status, err)
    assert 'evil.state' in line and 'carries code' in line
    assert 'weights_only=False' not in err
    assert not (tmp_path / 'pwned').exists()
    assert no_output_folders(tmp_path)


# --- 4. wrong options: one line naming the key, before any folder exists ----------------------------------


def _set(*keys_value):
    *keys, value = keys_value

    def edit(opt):
        node = opt
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return edit


def _delete(*keys):
    def edit(opt):
        node = opt
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]

    return edit


def _lmdb_without_meta_info(opt, folder):
    for key in ('dataroot_gt', 'dataroot_lq'):
        root = os.path.join(folder, f'{key}.lmdb')
        os.makedirs(root)
        opt['datasets']['train'][key] = root
    opt['datasets']['train']['io_backend'] = {'type': 'lmdb'}


BAD_OPTIONS = {
    'unknown network key': (_set('network_g', 'embed_dims', 12), ['network_g', 'embed_dims']),
    'depths not a list': (_set('network_g', 'depths', 'four'), ['network_g', 'depths']),
    'a stage without layers': (_set('network_g', 'depths', [0, 2]), ['network_g', 'depths']),
    'missing dataroot_gt': (_delete('datasets', 'train', 'dataroot_gt'), ['datasets:train', 'dataroot_gt']),
    'dataroot that does not exist': (
        _set('datasets', 'train', 'dataroot_gt', 'datasets/DIV2K/DIV2K_train_HR_sub'),
        ['datasets:train:dataroot_gt', 'DIV2K_train_HR_sub', 'msrasr prepare', '--out datasets/DIV2K', '--name DIV2K']),
    'benchmark set that does not exist': (
        _set('datasets', 'val', 'dataroot_lq', 'datasets/benchmark/Set14/LR_bicubic/X2'),
        ['datasets:val:dataroot_lq', 'msrasr prepare --benchmark', '--out datasets/benchmark/Set14']),
    'lmdb without meta_info.txt': (_lmdb_without_meta_info, ['dataroot_gt', 'meta_info.txt']),
    'images smaller than gt_size': (_set('datasets', 'train', 'gt_size', 64), ['gt_size', '48x48']),
    'misspelt top-level key': (lambda opt: opt.update(trian=opt.pop('train')), ['trian']),
    'path outside experiments/': (_set('name', '../escape'), ['name']),
    'print_freq not a number': (_set('logger', 'print_freq', 'often'), ['logger:print_freq']),
}


@pytest.mark.parametrize('case', list(BAD_OPTIONS))
def test_bad_options_stop_with_one_line_before_any_folder_is_made(dirs, tmp_path, case):
    edit, expected = BAD_OPTIONS[case]
    opt = tiny_options(dirs)
    if edit is _lmdb_without_meta_info:
        edit(opt, str(tmp_path))
    else:
        edit(opt)
    status, err = run(['train', '-opt', write_options(tmp_path, opt, 'opts.yml')], tmp_path)
    line = error_line(status, err)
    for fragment in expected:
        assert fragment in line, (fragment, line)
    assert no_output_folders(tmp_path)
    assert not (tmp_path / 'escape').exists()


@pytest.mark.parametrize('name', sorted(glob.glob(os.path.join(OPTIONS, '**', '*.yml'), recursive=True)),
                         ids=lambda p: os.path.relpath(p, OPTIONS))
def test_every_packaged_option_file_passes_the_key_and_network_checks(name):
    """The keys the checks accept cover what the shipped files use (their data sets are not here)."""
    from msrasr_arch.utils.option_checks import check_networks, check_top_level

    with open(name, encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    check_top_level(opt, source=name, is_train='train' in opt['datasets'])
    check_networks(opt, source=name)


def test_test_command_checks_its_options_too(dirs, tmp_path):
    with open(os.path.join(OPTIONS, 'test_MSRASR_x2.yml'), encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    opt['num_gpu'] = 0
    opt['path']['pretrain_network_g'] = str(tmp_path / 'missing.pth')
    status, err = run(['test', '-opt', write_options(tmp_path, opt)], tmp_path)
    line = error_line(status, err, prog='basicsr test')
    assert 'dataroot' in line or 'missing.pth' in line
    assert no_output_folders(tmp_path)


# --- 5. built-in option names -----------------------------------------------------------------------------


@pytest.mark.parametrize('name', ['train_MSRASR_light_x2', 'train_MSRASR_light_x2.yml'])
def test_builtin_option_name_resolves_to_the_packaged_file(tmp_path, name):
    status, err = run(['train', '-opt', name], tmp_path)
    line = error_line(status, err)
    # It got as far as the packaged file's data set, which this empty folder lacks.
    assert 'datasets/DIV2K/DIV2K_train_HR_sub.lmdb' in line and 'msrasr prepare' in line, line
    assert no_output_folders(tmp_path)


def test_unknown_option_name_points_at_the_list(tmp_path):
    line = error_line(*run(['train', '-opt', 'train_MSRASR_huge_x2'], tmp_path))
    assert 'train_MSRASR_huge_x2' in line and 'msrasr options list' in line
    line = error_line(*run(['train', '-opt', str(tmp_path / 'nowhere' / 'mine.yml')], tmp_path))
    assert 'mine.yml' in line


def test_pickled_state_loader_message_names_the_import(tmp_path):
    from msrasr_arch.utils.checkpoint import load_training_state
    from msrasr_arch.utils.errors import UserError

    path = tmp_path / '7.state'
    path.write_bytes(pickle.dumps(_RunsShell('touch pwned'), protocol=2))
    with pytest.raises(UserError, match=r'7\.state.*carries code') as info:
        load_training_state(str(path))
    assert 'system' in str(info.value)  # names what it asks to import
    assert 'weights_only' not in str(info.value) and '\n' not in str(info.value)
    assert not (tmp_path / 'pwned').exists()


# --- 7. kill -9 at random moments -------------------------------------------------------------------------


@pytest.mark.slow
def test_auto_resume_after_random_kills(tmp_path):
    sys.path.insert(0, os.path.join(REPO, 'benchmarks'))
    try:
        from kill_loop_train import kill_loop
    finally:
        sys.path.pop(0)
    figures = kill_loop(str(tmp_path), kills=3, seed=1)
    assert figures['ok'], figures
    assert figures['published_files_checked'] > 0 and not figures['unreadable_files']
