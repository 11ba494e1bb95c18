"""
Train a GPT in bf16, in INT8 (Jetfire's per-block data flow) or in INT8 with block fallback.
The settings below are the defaults; a config file (a .py of `key = value` lines) and --key=value
override them, in the order given (nanoGPT style):

    python train.py --int8 --fallback                   # bf16 without flags (fp32 on CPU)
    python train.py my_config.py --int8 --max_iters=2000 --out_dir=out-int8
    python train.py --resume --out_dir=out-int8         # continue that run exactly
    torchrun --standalone --nproc_per_node=8 train.py --int8 --fallback   # data parallel (DDP)

No download: the default data is the Python standard library's own source, as bytes (vocab 256);
--data=PATH takes a text file, a folder of .txt/.md/.py files, or nanoGPT's train.bin/val.bin.
A run writes out_dir/log.jsonl and out_dir/ckpt.pt (at every eval, at the end, on Ctrl-C).
On a GPU each micro-step's forward and backward is captured once as a CUDA graph and replayed
(cuda_graph.py: the int8 step is hundreds of small kernels; --cuda_graph=False runs it eagerly).
Under torchrun, rank r of N trains on micro-batches r, r+N, ... of the gradient_accumulation_steps
of a step (all ranks together, as in nanoGPT): N processes see exactly the batches of one. Rank 0
alone prints, logs, samples and writes checkpoints.
"""
import ast
import json
import math
import os
import random
import signal
import sys
import textwrap
import time
from contextlib import nullcontext
from types import ModuleType, SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from cuda_graph import GraphedMicroStep
from data import load_data
from model import GPT, GPTConfig

# -----------------------------------------------------------------------------
# default config values. None means "chosen after parsing": see BY_DEVICE and DERIVED below.
# I/O
out_dir = 'out'
data = 'stdlib'          # 'stdlib', a text file, a folder of text files, or a folder with train.bin
eval_interval = None     # evaluate and checkpoint every this many iterations; None: max_iters // 5
eval_iters = None        # batches per split in an evaluation
log_interval = 10
resume = False           # continue the run saved in out_dir/ckpt.pt
progress = True          # tqdm progress bar
sample = True            # print a generated sample at the end
# model
n_layer = None
n_head = None
n_embd = None
block_size = None
mlp = 'gelu'             # 'gelu' (GPT-2) or 'swiglu' (Llama)
norm = 'layernorm'       # 'layernorm' or 'rmsnorm'
int8 = False             # INT8 data flow inside every transformer block
fallback = False         # with int8: outlier blocks keep a second int8 plane
qblock = GPTConfig.qblock
fallback_rule = GPTConfig.fallback_rule  # the outlier rule: see fallback.py
fallback_threshold = GPTConfig.fallback_threshold
fallback_grad = GPTConfig.fallback_grad  # also give output gradients a second plane
# AdamW and the learning-rate schedule
batch_size = 16                   # per micro-batch, per rank
gradient_accumulation_steps = None  # micro-batches per step, all ranks together; None: one per rank
max_iters = None
learning_rate = None     # peak learning rate
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0          # 0.0 turns clipping off
warmup_iters = None      # None: max_iters // 20
lr_decay_iters = None    # cosine decay ends here, then min_lr; None: max_iters
min_lr = None            # None: learning_rate / 10
# system
device = 'auto'          # 'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...
dtype = None             # 'bfloat16' (autocast) or 'float32'
compile = False          # torch.compile the model
cuda_graph = None        # replay each micro-step's forward + backward as a CUDA graph (cuda_graph.py)
seed = 1337
# -----------------------------------------------------------------------------
# Defaults that fit the machine, as (cpu, cuda): a small model that trains in about two minutes
# on a 2-core CPU (the INT8 reference ops are slow there), GPT-2 small on a GPU.
BY_DEVICE = dict(n_layer=(4, 12), n_head=(4, 12), n_embd=(128, 768), block_size=(128, 1024),
                 max_iters=(150, 5000), learning_rate=(1e-3, 6e-4), dtype=('float32', 'bfloat16'),
                 eval_iters=(10, 100), cuda_graph=(False, True))
# Defaults derived from other settings, with their types.
DERIVED = dict(gradient_accumulation_steps=int, eval_interval=int, warmup_iters=int,
               lr_decay_iters=int, min_lr=float)
MODEL_KEYS = ('block_size', 'n_layer', 'n_head', 'n_embd', 'mlp', 'norm', 'int8', 'fallback',
              'qblock', 'fallback_rule', 'fallback_threshold', 'fallback_grad')


def parse_config(argv):
    """Defaults above <- config files and --key=value, in order. Returns (config, keys set)."""
    # the config: every lowercase module-level name of a simple type (nanoGPT's rule)
    config = {k: v for k, v in globals().items() if not k.startswith('_') and k.islower()
              and (v is None or type(v) in (int, float, bool, str))}
    types = {k: type(v) for k, v in config.items() if v is not None}
    types.update({k: type(v[0]) for k, v in BY_DEVICE.items()}, **DERIVED)
    default = dict(config)
    set_keys = set()

    def check_key(key, where):
        if key not in config:
            raise ValueError(f'unknown config key {key!r} ({where}); valid keys: {", ".join(config)}')

    def set_value(key, value, where):
        check_key(key, where)
        want = types.get(key, object)  # object: a None default of the model's, any type goes
        if want is float and type(value) is int:
            value = float(value)
        if not (type(value) is want or want is object or (value is None and default[key] is None)):
            raise ValueError(f'{key} must be {want.__name__}, got {value!r} '
                             f'({type(value).__name__}) from {where}')
        config[key] = value
        set_keys.add(key)

    for arg in argv:
        if not arg.startswith('--'):  # a config file: python code that assigns config keys
            if not os.path.isfile(arg):
                raise ValueError(f'config file {arg!r} not found (options look like --key=value)')
            namespace = dict(config)
            with open(arg) as f:
                exec(f.read(), namespace)
            if os.environ.get('RANK', '0') == '0':  # under torchrun, only rank 0 talks
                print(f'config file {arg}')
            for key, value in namespace.items():
                if not key.startswith('_') and not isinstance(value, ModuleType) and \
                        not callable(value) and (key not in config or value is not config[key]):
                    set_value(key, value, arg)
            continue
        key, eq, value = arg[2:].partition('=')
        key = key.replace('-', '_')
        check_key(key, arg)
        if not eq:  # a bare --flag means True
            if types.get(key) is not bool:
                raise ValueError(f'--{key} needs a value: --{key}=...')
            value = True
        elif types.get(key) is not str or value == 'None':
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                if types.get(key) is float and value.lower() in ('inf', '-inf'):
                    value = float(value)  # --fallback_threshold=inf: plain int8
                # else keep the string; set_value says so if the key wants another type
        set_value(key, value, arg)
    return config, set_keys


def get_lr(it, c):
    """Linear warmup, then cosine decay to min_lr at lr_decay_iters (nanoGPT's schedule)."""
    if it < c.warmup_iters:
        return c.learning_rate * (it + 1) / (c.warmup_iters + 1)
    if it > c.lr_decay_iters:
        return c.min_lr
    ratio = (it - c.warmup_iters) / max(1, c.lr_decay_iters - c.warmup_iters)
    return c.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (c.learning_rate - c.min_lr)


def main(argv=None):
    config, set_keys = parse_config(sys.argv[1:] if argv is None else argv)
    if config['device'] == 'auto':
        config['device'] = 'cuda' if torch.cuda.is_available() else 'cpu'
    # torchrun starts one process per GPU and tells each its RANK, LOCAL_RANK and WORLD_SIZE
    ddp = 'RANK' in os.environ
    rank, world_size = int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))
    master = rank == 0
    if ddp and 'cuda' in config['device']:
        config['device'] = f"cuda:{os.environ['LOCAL_RANK']}"
    if torch.device(config['device']).index is not None:  # 'cuda:1': make it the current
        torch.cuda.set_device(config['device'])  # device, where the CuPy kernels launch
    own_group = ddp and not dist.is_initialized()  # a caller may have made one (the tests do)
    if own_group:
        dist.init_process_group(backend='nccl' if 'cuda' in config['device'] else 'gloo')

    def print0(text):  # only rank 0 talks; tqdm.write keeps a progress bar intact
        if master:
            tqdm.write(text)

    device_type = 'cuda' if 'cuda' in config['device'] else 'cpu'
    ckpt_path = os.path.join(config['out_dir'], 'ckpt.pt')
    ckpt = None
    if config['resume']:  # the run's own settings, except the machine's and the ones given now
        if not os.path.isfile(ckpt_path):
            raise FileNotFoundError(f'--resume: no checkpoint at {ckpt_path}')
        ckpt = torch.load(ckpt_path, map_location='cpu')
        for k, v in ckpt['config'].items():
            if k in config and k not in set_keys | {'device', 'dtype', 'out_dir', 'resume'}:
                config[k] = v
    for k, (on_cpu, on_cuda) in BY_DEVICE.items():
        if config[k] is None:
            config[k] = on_cuda if device_type == 'cuda' else on_cpu
    for k, v in dict(gradient_accumulation_steps=world_size,
                     eval_interval=max(1, config['max_iters'] // 5),
                     warmup_iters=config['max_iters'] // 20, lr_decay_iters=config['max_iters'],
                     min_lr=config['learning_rate'] / 10).items():
        if config[k] is None:
            config[k] = v
    if config['dtype'] not in ('bfloat16', 'float32'):
        raise ValueError(f"dtype must be 'bfloat16' or 'float32', got {config['dtype']!r}")
    if config['cuda_graph'] and device_type != 'cuda':
        raise ValueError('cuda_graph=True needs a CUDA device')
    if config['cuda_graph'] and (ddp or config['compile']):
        if 'cuda_graph' in set_keys:
            print0('cuda_graph: off (not supported with DDP or torch.compile)')
        config['cuda_graph'] = False
    if config['gradient_accumulation_steps'] % world_size:
        raise ValueError(f"gradient_accumulation_steps={config['gradient_accumulation_steps']} "
                         f"(all ranks together) is not a multiple of the {world_size} processes")
    print0('config: ' + textwrap.fill(', '.join(f'{k}={v!r}' for k, v in config.items()), 100,
                                      subsequent_indent='    '))
    c = SimpleNamespace(**config)

    # -- data --------------------------------------------------------------------------------
    # DDP starts every rank from rank 0's weights; seed + rank gives each rank its own
    # stochastic-rounding noise (quantize.py draws it from torch's RNG, also on CUDA)
    torch.manual_seed(c.seed + rank)
    random.seed(c.seed)
    if device_type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ctx = nullcontext() if c.dtype == 'float32' else torch.autocast(device_type, dtype=torch.bfloat16)
    train_data, val_data, vocab_size, decode, prompt = load_data(c.data)
    print0(f'data: {c.data}: {len(train_data):,} train and {len(val_data):,} val tokens, '
           f'vocab {vocab_size}')
    if min(len(train_data), len(val_data)) <= c.block_size:
        raise ValueError(f'data: a split holds fewer than block_size+1 = {c.block_size + 1} tokens')
    tokens_per_iter = c.gradient_accumulation_steps * c.batch_size * c.block_size  # all ranks
    grad_accum = c.gradient_accumulation_steps // world_size  # micro-batches of this rank

    def get_batch(split_data, generator, keep=True):
        ix = torch.randint(len(split_data) - c.block_size, (c.batch_size,), generator=generator)
        if not keep:  # another rank's micro-batch: only move the generator past it
            return None, None
        x = torch.stack([torch.from_numpy(split_data[i:i + c.block_size].astype(np.int64))
                         for i in ix.tolist()])
        y = torch.stack([torch.from_numpy(split_data[i + 1:i + 1 + c.block_size].astype(np.int64))
                         for i in ix.tolist()])
        if device_type == 'cuda':  # pinned memory: the copy overlaps with the GPU's work
            x, y = (t.pin_memory().to(c.device, non_blocking=True) for t in (x, y))
        return x, y

    # its own generator, so the data position is part of the checkpoint; the same on every rank
    train_gen = torch.Generator().manual_seed(c.seed)

    # -- model and optimizer -----------------------------------------------------------------
    model_args = {k: config[k] for k in MODEL_KEYS} | {'vocab_size': vocab_size}
    if ckpt is not None and ckpt['model_args'] != model_args:
        diff = [f'{k}={v!r} here, {ckpt["model_args"].get(k)!r} there' for k, v in model_args.items()
                if ckpt['model_args'].get(k) != v]
        raise ValueError(f'--resume: the model differs from the one in {ckpt_path}: '
                         f'{"; ".join(diff)} (drop those settings, or use a new out_dir)')
    raw_model = GPT(GPTConfig(**model_args)).to(c.device)
    mode = 'int8 + fallback' if c.fallback else 'int8' if c.int8 else c.dtype
    print0(f'model: {raw_model.get_num_params() / 1e6:.2f}M parameters, {mode}, on {c.device}')
    optimizer = raw_model.configure_optimizers(c.weight_decay, c.learning_rate, (c.beta1, c.beta2),
                                               device_type)
    iter_num, best_val_loss = 0, float('inf')
    if ckpt is not None:
        raw_model.load_state_dict(ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        iter_num, best_val_loss = ckpt['iter_num'], ckpt['best_val_loss']
        rngs = ckpt['rng']  # one per rank of the run that saved it
        if rank < len(rngs):  # a rank that run did not have keeps seed + rank
            torch.set_rng_state(rngs[rank]['torch'])
            if device_type == 'cuda' and rngs[rank]['cuda'] is not None:
                torch.cuda.set_rng_state(rngs[rank]['cuda'], c.device)
            raw_model.fb.load_state_dict(rngs[rank].get('fallback', {}))
        train_gen.set_state(rngs[0]['batches'])
        random.setstate(rngs[0]['python'])
        print0(f'resumed from {ckpt_path} at iter {iter_num}')
        del ckpt
    # the int8 weight-gradient GEMMs add into existing .grad themselves (Int8Spec.wgrad); DDP's
    # hooks wait for autograd to accumulate every gradient, and compile traces autograd's adds
    raw_model.fuse_weight_grads(not ddp and not c.compile)
    model = torch.compile(raw_model) if c.compile else raw_model  # evaluation runs this
    train_model = model
    if ddp:  # DDP averages the fp32 gradients across ranks during backward
        train_model = DDP(model, device_ids=[c.device] if device_type == 'cuda' else None)
        print0(f'ddp: {world_size} processes ({dist.get_backend()}), {grad_accum} x {c.batch_size} '
               f'sequences per process and step, {tokens_per_iter:,} tokens per step in all')

    graphed = None  # the micro-step as a CUDA graph (its own autocast: no cast cache in a graph)
    if c.cuda_graph:
        graph_ctx = (nullcontext() if c.dtype == 'float32' else
                     torch.autocast(device_type, dtype=torch.bfloat16, cache_enabled=False))
        graphed = GraphedMicroStep(raw_model, graph_ctx, 1 / grad_accum,
                                   raw_model.fb if c.fallback else None)

    @torch.no_grad()
    def estimate_loss():
        """Mean loss over the same eval_iters batches at every eval, so evals compare; its own
        generator and a forked torch RNG, so evaluating never changes the training run. Every
        rank evaluates the same batches, without DDP: none waits for another."""
        out = {}
        eval_gen = torch.Generator().manual_seed(c.seed + 1)
        model.eval()
        with torch.random.fork_rng(devices=[torch.device(c.device)] if device_type == 'cuda' else []):
            for split, split_data in (('train', train_data), ('val', val_data)):
                losses = torch.zeros(c.eval_iters)
                for k in range(c.eval_iters):
                    X, Y = get_batch(split_data, eval_gen)
                    with ctx:
                        _, loss = model(X, Y)
                    losses[k] = loss.item()
                out[split] = losses.mean().item()
        model.train()
        return out

    def save_checkpoint():
        """Every rank calls this: rank 0 gathers each rank's RNG (its own stochastic-rounding
        stream) and fallback plane budgets, and writes to a temporary file, then renames: a crash
        mid-write never leaves a broken ckpt. raw_model's keys carry no DDP 'module.' prefix:
        one process loads it too."""
        rng = dict(torch=torch.get_rng_state(), batches=train_gen.get_state(),
                   cuda=torch.cuda.get_rng_state(c.device) if device_type == 'cuda' else None,
                   python=random.getstate(), fallback=raw_model.fb.state_dict())
        rngs = [rng]
        if ddp:
            rngs = [None] * world_size if master else None
            dist.gather_object(rng, rngs)
        if master:
            ckpt = dict(model=raw_model.state_dict(), optimizer=optimizer.state_dict(),
                        model_args=model_args, config=config, iter_num=iter_num,
                        best_val_loss=best_val_loss, rng=rngs)
            torch.save(ckpt, ckpt_path + '.tmp')
            os.replace(ckpt_path + '.tmp', ckpt_path)
        if ddp:  # no rank goes on (or exits) before the checkpoint is on disk
            dist.barrier()

    log_path = os.path.join(c.out_dir, 'log.jsonl')
    os.makedirs(c.out_dir, exist_ok=True)
    if not c.resume and master:
        open(log_path, 'w').close()

    def log(**entry):
        if master:
            with open(log_path, 'a') as f:
                f.write(json.dumps(entry) + '\n')

    # Ctrl-C finishes the current step, then saves: a step cut in half (say, inside
    # optimizer.step) would leave a checkpoint that no uninterrupted run ever had.
    stop = []

    def on_sigint(signum, frame):
        if stop:
            raise KeyboardInterrupt  # a second Ctrl-C quits at once
        stop.append(True)
        print0('Ctrl-C: finishing this step, then saving a checkpoint (Ctrl-C again: quit now)')

    old_handler = signal.signal(signal.SIGINT, on_sigint)  # main() runs in the main thread

    # -- training loop -----------------------------------------------------------------------
    iters, train_losses, fb_sum, fb_steps, fb_overflows = [], [], {}, 0, (0, 0)
    losses, eval_iter, halt = None, None, False
    bar = tqdm(total=c.max_iters, initial=iter_num, disable=not c.progress or not master,
               dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30)
    try:
        while iter_num < c.max_iters and not halt:
            t0 = time.perf_counter()
            lr = get_lr(iter_num, c)
            for group in optimizer.param_groups:
                group['lr'] = lr
            loss_sum = 0.0
            for micro_step in range(c.gradient_accumulation_steps):
                # every rank draws every micro-batch of the global batch and trains on its own
                # share, r, r+N, ...: the batches a single process would train on
                mine = micro_step % world_size == rank
                X, Y = get_batch(train_data, train_gen, keep=mine)
                if not mine:
                    continue
                if ddp:  # all-reduce the gradients in this rank's last backward only
                    train_model.require_backward_grad_sync = \
                        micro_step >= c.gradient_accumulation_steps - world_size
                if graphed is not None:
                    loss = graphed(X, Y)
                else:
                    with ctx:
                        _, loss = train_model(X, Y)
                    (loss / grad_accum).backward()  # DDP's average over ranks does the rest
                loss_sum += loss.detach()
            if c.grad_clip > 0.0:
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), c.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=graphed is None)  # a graph adds into its .grad
            lossf, halt = loss_sum.item(), bool(stop)  # .item() waits for the GPU
            if graphed is not None:  # reads the replays' fallback flag counts
                graphed.end_step()
            if ddp:  # the whole batch's loss for the log; Ctrl-C on any rank stops all ranks here
                t = torch.tensor([lossf, float(halt)], device=c.device)
                dist.all_reduce(t)
                lossf, halt = t[0].item(), t[1].item() > 0
            lossf /= c.gradient_accumulation_steps
            if not math.isfinite(lossf):  # every rank sees the reduced loss, so all stop here
                raise FloatingPointError(
                    f'iter {iter_num}: the loss is {lossf}, the run diverged. The checkpoint of the '
                    f'last evaluation in {c.out_dir} is intact (nothing is saved now): lower '
                    f'learning_rate and --resume, or start over')
            dt = time.perf_counter() - t0
            iters.append(iter_num)
            train_losses.append(lossf)
            for name, frac in raw_model.fallback_stats().items():  # empty when fallback is off
                fb_sum[name] = fb_sum.get(name, 0.0) + frac
            fb_steps += 1
            bar.set_postfix(loss=f'{lossf:.4f}', lr=f'{lr:.2e}', tok_s=f'{tokens_per_iter / dt:,.0f}',
                            refresh=False)
            bar.update()

            if iter_num % c.log_interval == 0 or iter_num == c.max_iters - 1:
                entry = dict(iter=iter_num, loss=lossf, lr=lr, tokens_per_s=tokens_per_iter / dt,
                             dt_ms=dt * 1000)
                if graphed is not None:  # 1 + re-captures after a fallback plane grew
                    entry['graph_captures'] = graphed.captures
                if not c.progress:
                    print0(f'iter {iter_num}: loss {lossf:.4f}, lr {lr:.2e}, '
                           f'{tokens_per_iter / dt:,.0f} tok/s, {dt * 1000:.1f} ms')
                if fb_sum:  # per-layer flagged fraction, averaged over the steps since the last log
                    fb = {name: s / fb_steps for name, s in fb_sum.items()}
                    if ddp:  # each rank flagged its own data: log the mean over ranks
                        t = torch.tensor(list(fb.values()), dtype=torch.float64, device=c.device)
                        dist.all_reduce(t)
                        fb = dict(zip(fb, (t / world_size).tolist()))
                    worst = max(fb, key=fb.get)
                    print0(f'iter {iter_num}: fallback flags {sum(fb.values()) / len(fb):.2%} of '
                           f'blocks on average, at most {fb[worst]:.2%} ({worst})')
                    entry['fallback'] = fb
                    overflows, dropped = raw_model.fb.overflows()  # see fallback.PlaneBudget
                    if overflows > fb_overflows[0]:
                        n, d = overflows - fb_overflows[0], dropped - fb_overflows[1]
                        print0(f'iter {iter_num}: {n} fallback planes overflowed their budget since '
                               f'the last log: {d} flagged blocks stayed plain int8 (the budgets '
                               f'have grown)')
                        entry['fallback_overflows'] = n
                        entry['fallback_dropped'] = d
                        fb_overflows = (overflows, dropped)
                log(**entry)
                fb_sum, fb_steps = {}, 0
            iter_num += 1

            if iter_num % c.eval_interval == 0 or iter_num == c.max_iters:
                losses, eval_iter = estimate_loss(), iter_num
                best_val_loss = min(best_val_loss, losses['val'])
                print0(f"iter {iter_num}: train loss {losses['train']:.4f}, "
                       f"val loss {losses['val']:.4f}")
                log(iter=iter_num, train_loss=losses['train'], val_loss=losses['val'])
                save_checkpoint()
    finally:
        bar.close()
        signal.signal(signal.SIGINT, old_handler)
    summary = dict(iters=iters, losses=train_losses, out_dir=c.out_dir, iter_num=iter_num,
                   config=config, interrupted=halt)
    if halt:
        save_checkpoint()
        print0(f'interrupted: saved {ckpt_path} at iter {iter_num}; continue with --resume')
        if own_group:
            dist.destroy_process_group()
        return summary
    if eval_iter != iter_num:  # nothing trained in this call: evaluate what there is
        losses = estimate_loss()
        best_val_loss = min(best_val_loss, losses['val'])
        save_checkpoint()
    print0(f"final: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} "
           f"at iter {iter_num}")
    summary.update(train_loss=losses['train'], val_loss=losses['val'])
    if device_type == 'cuda':  # the most this process held at once: training step or evaluation
        summary['peak_mib'] = torch.cuda.max_memory_allocated(c.device) / 2**20
        print0(f"peak memory: {summary['peak_mib']:,.0f} MiB allocated (rank 0)")

    if c.sample and master:
        raw_model.eval()
        with torch.no_grad(), ctx:
            ids = raw_model.generate(torch.tensor([[prompt]], device=c.device), 200,
                                     temperature=0.8, top_k=100)[0].tolist()
        print('sample:', '-' * 60, decode(ids) if decode else ids, '-' * 68, sep='\n')
    if own_group:
        dist.destroy_process_group()
    return summary


if __name__ == '__main__':
    main()
