"""
End-to-end tests of train.py on the CPU: a tiny model learns in every mode, INT8 stays close to
float, --resume (and Ctrl-C) continue a run exactly, the config parser, the data loaders.
"""
import json
import os
import pickle
import signal

import numpy as np
import pytest
import torch

import data
import train

TINY = ['--n_layer=2', '--n_head=2', '--n_embd=64', '--block_size=32', '--batch_size=8',
        '--eval_iters=2', '--progress=False', '--sample=False', '--device=cpu']
MODES = {'float': [], 'int8': ['--int8'], 'int8+fallback': ['--int8', '--fallback']}


def run(out_dir, *args):
    return train.main(TINY + [f'--out_dir={out_dir}', *args])


def read_log(out_dir):
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        return [json.loads(line) for line in f]


# -- every mode learns; INT8 tracks float -------------------------------------------------------

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """The three modes from one seed: same init, same batches, only the arithmetic differs."""
    return {mode: run(tmp_path_factory.mktemp(mode.replace('+', '_')), '--max_iters=60', *args)
            for mode, args in MODES.items()}


@pytest.mark.parametrize('mode', MODES)
def test_mode_learns(runs, mode):
    r = runs[mode]
    assert r['iters'] == list(range(60))
    first, last = np.mean(r['losses'][:10]), np.mean(r['losses'][-10:])
    # from ~ln(256) = 5.5 at init, a tiny model learns byte frequencies and common words fast
    assert last < 0.8 * first, f'{mode}: loss went from {first:.3f} (first 10) to {last:.3f} (last 10)'
    log = read_log(r['out_dir'])
    assert [e['iter'] for e in log if 'loss' in e] == list(range(0, 60, 10)) + [59]
    assert [e['iter'] for e in log if 'val_loss' in e] == [12, 24, 36, 48, 60]
    assert all(e['tokens_per_s'] > 0 and e['dt_ms'] > 0 for e in log if 'loss' in e)
    fb = [e['fallback'] for e in log if 'fallback' in e]
    if mode == 'int8+fallback':  # one flagged fraction per quantized layer at every log line
        assert len(fb) == 7 and fb[0] and all(0.0 <= v <= 1.0 for v in fb[0].values()), fb[0]
    else:
        assert not fb
    assert os.path.isfile(os.path.join(r['out_dir'], 'ckpt.pt'))


@pytest.mark.parametrize('mode', ['int8', 'int8+fallback'])
def test_int8_tracks_float(runs, mode):
    # Per-block INT8 (RTN forward, unbiased stochastic-rounding gradients) adds noise of about
    # 1/254 of a block's absmax per element; Jetfire reports loss curves on top of FP16's. Here,
    # after 60 steps from one seed, the final val loss (the same eval batches in every mode) is
    # within 0.1% of the float run's. 2% leaves room for other torch builds and rounding draws,
    # and still fails a broken path (a wrong scale or transpose, a lost gradient) by far.
    ref, got = runs['float']['val_loss'], runs[mode]['val_loss']
    assert abs(got - ref) / ref < 0.02, f'{mode} val loss {got:.4f} vs float {ref:.4f}'


# -- resume --------------------------------------------------------------------------------------

def test_resume_is_exact(tmp_path):
    # INT8: stochastic rounding of gradients draws from torch's RNG, so the RNG state must be
    # restored along with the weights, AdamW's state and the batch generator.
    args = ['--int8', '--eval_interval=20', '--warmup_iters=5', '--lr_decay_iters=40']
    a = run(tmp_path / 'a', '--max_iters=40', *args)
    b1 = run(tmp_path / 'b', '--max_iters=20', *args)
    b2 = run(tmp_path / 'b', '--max_iters=40', '--resume')  # the other settings come from ckpt.pt
    assert b1['losses'] == a['losses'][:20]
    assert b2['iters'] == list(range(20, 40))
    assert b2['losses'] == a['losses'][20:], 'resumed run diverged from the straight run'
    assert b2['val_loss'] == a['val_loss']
    log_a, log_b = read_log(tmp_path / 'a'), read_log(tmp_path / 'b')  # b: both calls, appended
    assert [e for e in log_b if 'val_loss' in e] == [e for e in log_a if 'val_loss' in e]
    assert log_b[0]['iter'] == 0 and log_b[-1]['iter'] == 40
    with pytest.raises(ValueError, match='n_layer=3 here, 2 there'):
        run(tmp_path / 'b', '--resume', '--n_layer=3')


def test_ctrl_c_saves_and_resumes_exactly(tmp_path, monkeypatch):
    handler = signal.getsignal(signal.SIGINT)
    straight = run(tmp_path / 'a', '--max_iters=12')
    get_lr = train.get_lr

    def interrupt_at_5(it, c):  # Ctrl-C in the middle of iteration 5
        if it == 5:
            signal.raise_signal(signal.SIGINT)
        return get_lr(it, c)

    monkeypatch.setattr(train, 'get_lr', interrupt_at_5)
    cut = run(tmp_path / 'b', '--max_iters=12')
    assert cut['interrupted'] and cut['iters'] == list(range(6)), 'iteration 5 should finish'
    assert torch.load(tmp_path / 'b' / 'ckpt.pt')['iter_num'] == 6
    monkeypatch.setattr(train, 'get_lr', get_lr)
    rest = run(tmp_path / 'b', '--resume')
    assert cut['losses'] + rest['losses'] == straight['losses']
    assert signal.getsignal(signal.SIGINT) is handler, 'the SIGINT handler was not restored'


# -- configuration -------------------------------------------------------------------------------

def test_config_flags_and_values():
    config, set_keys = train.parse_config(['--int8', '--fallback', '--max_iters=7',
                                           '--learning_rate=1', '--out_dir=123', '--data=/x/y.txt',
                                           '--grad-clip=0.5', '--sample=False'])
    assert config['int8'] is True and config['fallback'] is True
    assert config['max_iters'] == 7 and config['learning_rate'] == 1.0
    assert type(config['learning_rate']) is float
    assert config['out_dir'] == '123' and config['data'] == '/x/y.txt'
    assert config['grad_clip'] == 0.5 and config['sample'] is False
    assert config['n_layer'] is None and 'n_layer' not in set_keys  # picked later, by device
    assert set_keys == {'int8', 'fallback', 'max_iters', 'learning_rate', 'out_dir', 'data',
                        'grad_clip', 'sample'}
    config, _ = train.parse_config(['--fallback_threshold=inf'])  # DESIGN's plain-int8 limit
    assert config['fallback_threshold'] == float('inf')


@pytest.mark.parametrize('argv, message', [
    (['--bogus=1'], "unknown config key 'bogus'.*valid keys: out_dir"),
    (['--n_layer=abc'], 'n_layer must be int'),
    (['--n_layer=2.5'], 'n_layer must be int'),
    (['--int8=3'], 'int8 must be bool'),
    (['--batch_size'], '--batch_size needs a value'),
    (['no_such_config.py'], 'config file .* not found'),
])
def test_config_errors(argv, message):
    with pytest.raises(ValueError, match=message):
        train.parse_config(argv)


def test_cuda_graph_needs_cuda(tmp_path):
    with pytest.raises(ValueError, match='cuda_graph=True needs a CUDA device'):
        run(tmp_path, '--cuda_graph=True', '--max_iters=1')


def test_config_file(tmp_path):
    path = tmp_path / 'cfg.py'
    path.write_text('import math\nn_layer = 3\nint8 = True\nlearning_rate = math.pi / 1000\n')
    config, set_keys = train.parse_config([str(path), '--n_layer=5'])  # later arguments win
    assert config['n_layer'] == 5 and config['int8'] is True
    assert config['learning_rate'] == pytest.approx(3.14159e-3)
    assert set_keys == {'n_layer', 'int8', 'learning_rate'}
    path.write_text('n_layers = 3\n')
    with pytest.raises(ValueError, match="unknown config key 'n_layers'"):
        train.parse_config([str(path)])


def test_defaults_by_device(tmp_path, capsys):
    r = train.main(['--device=cpu', '--max_iters=0', '--eval_iters=1', '--sample=False',
                    f'--out_dir={tmp_path}'])
    c = r['config']
    assert (c['n_layer'], c['n_head'], c['n_embd'], c['block_size']) == (4, 4, 128, 128)
    assert c['dtype'] == 'float32' and c['max_iters'] == 0 and c['lr_decay_iters'] == 0
    assert c['min_lr'] == c['learning_rate'] / 10
    out = capsys.readouterr().out
    assert "config: out_dir=" in out and 'n_layer=4' in out
    assert 'data: stdlib: ' in out and 'final: train loss' in out


# -- data ----------------------------------------------------------------------------------------

def test_data_text_file(tmp_path, capsys):
    text = tmp_path / 'corpus.txt'
    text.write_bytes(b'the quick brown fox jumps over the lazy dog\n' * 200)  # 8,800 bytes
    r = run(tmp_path / 'out', f'--data={text}', '--max_iters=3', '--sample=True')
    out = capsys.readouterr().out
    assert 'data: ' + str(text) + ': 7,920 train and 880 val tokens, vocab 256' in out
    assert 'sample:' in out and r['iter_num'] == 3


def test_data_text_folder(tmp_path):
    (tmp_path / 'sub').mkdir()
    (tmp_path / 'b.md').write_bytes(b'B' * 30)
    (tmp_path / 'a.txt').write_bytes(b'A' * 40)
    (tmp_path / 'sub' / 'c.py').write_bytes(b'C' * 30)
    (tmp_path / 'skip.bin').write_bytes(b'X' * 100)
    tr, val, vocab, decode, prompt = data.load_data(str(tmp_path))
    assert decode(np.concatenate([tr, val])) == 'A' * 40 + 'B' * 30 + 'C' * 30  # sorted by path
    assert (len(tr), len(val), vocab, prompt) == (90, 10, 256, ord('\n'))


def test_data_stdlib_is_deterministic():
    tr, val, vocab, _, _ = data.load_data('stdlib')
    assert vocab == 256 and len(tr) > 10**6 and len(tr) + len(val) <= data.STDLIB_CAP
    assert bytes(tr[:1000]) == data.stdlib_bytes()[:1000]


def test_data_token_bins(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rng.integers(0, 300, 5000, dtype=np.uint16).tofile(tmp_path / 'train.bin')
    np.append(rng.integers(0, 300, 500, dtype=np.uint16), 299).astype(np.uint16).tofile(tmp_path / 'val.bin')
    out_dir = tmp_path / 'out'
    run(out_dir, f'--data={tmp_path}', '--max_iters=2', '--sample=True')
    assert torch.load(out_dir / 'ckpt.pt')['model_args']['vocab_size'] == 320  # 300 -> next 64
    out = capsys.readouterr().out
    assert '5,000 train and 501 val tokens, vocab 320' in out
    assert 'sample:\n' + '-' * 60 + '\n[' in out  # no decoder: the sample is token ids
    with open(tmp_path / 'meta.pkl', 'wb') as f:
        pickle.dump({'vocab_size': 384}, f)
    assert data.load_data(str(tmp_path))[2] == 384


def test_diverged_run_stops_with_a_clear_error(tmp_path, monkeypatch):
    """A NaN loss (on CUDA the int8 kernels carry NaN through as NaN scales) stops the run
    instead of training on: the last evaluation's checkpoint stays as it was."""
    import model
    real = model.F.cross_entropy
    calls = []

    def nan_after_three(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) > 3 else loss
    monkeypatch.setattr(model.F, "cross_entropy", nan_after_three)
    with pytest.raises(FloatingPointError, match="iter 3: the loss is nan, the run diverged"):
        run(tmp_path, "--eval_interval=100")


@pytest.mark.gpu
@pytest.mark.parametrize('device', ['cuda', 'cuda:0'])
def test_trains_on_the_gpu_in_every_mode(tmp_path, device):
    """The GPU path end to end (a bare 'cuda' device once broke set_device): every mode runs
    the CUDA kernels, learns, and reports its peak memory."""
    for mode, args in MODES.items():
        r = train.main([a for a in TINY if not a.startswith('--device')] + [
            f'--device={device}', f'--out_dir={tmp_path / mode.replace("+", "_")}',
            '--max_iters=30', *args])
        assert r['val_loss'] < 5.0 and r['peak_mib'] > 0, (mode, r['val_loss'])  # ln 256 = 5.55
