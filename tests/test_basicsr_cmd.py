"""The `basicsr` command's own behaviour (the pipelines themselves are exercised in test_training.py)."""
import os

from msrasr_arch.cli import basicsr_cmd

from sr_cli import OPTIONS

TRAIN = os.path.join(OPTIONS, 'train_MSRASR_x2.yml')


def test_help_and_unknown_command(capsys):
    assert basicsr_cmd.main(['--help']) == 0
    assert 'basicsr {train,test}' in capsys.readouterr().out
    assert basicsr_cmd.main(['fit', '-opt', TRAIN]) == 2
    assert "unknown command 'fit'" in capsys.readouterr().err


def test_one_line_errors(capsys, tmp_path):
    assert basicsr_cmd.main(['train', '-opt', str(tmp_path / 'missing.yml')]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and 'missing.yml: no such option file' in err
    assert basicsr_cmd.main(['train', '-opt', TRAIN, '--force_yml', 'netwrk_g:embed_dim=12']) == 2
    assert 'has no key netwrk_g' in capsys.readouterr().err
    assert basicsr_cmd.main(['train', '-opt', TRAIN, '--force_yml', 'name']) == 2
    assert 'exactly one "="' in capsys.readouterr().err
    bad = tmp_path / 'bad.yml'
    bad.write_text('name: [unclosed\n')
    assert basicsr_cmd.main(['test', '-opt', str(bad)]) == 2
    assert 'not valid YAML' in capsys.readouterr().err


def test_plugins_and_flag_rewrite():
    assert 'msrasr_arch' in basicsr_cmd.load_plugins()
    from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY

    ARCH_REGISTRY.get('MSRASR')
    MODEL_REGISTRY.get('MSRASRModel')
    assert basicsr_cmd._rewrite_flags(['--local-rank=1', '-opt', 'x.yml']) == ['--local_rank=1', '-opt', 'x.yml']


def test_fixes_replace_basicsr_globals():
    import basicsr.train
    import basicsr.utils.options

    from msrasr_arch.utils import basicsr_fixes

    basicsr_fixes.apply()
    basicsr_fixes.apply()  # idempotent
    assert basicsr.train.load_resume_state is basicsr_fixes.load_resume_state
    assert basicsr.utils.options.init_dist.__wrapped__.__module__ == 'basicsr.utils.dist_util'
