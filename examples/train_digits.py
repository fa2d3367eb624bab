"""The main job: train a small CNN on real handwritten digits with one jitted training step.

    make demo                      # installs fusejit with the demo extra, runs this file
    fusejit demo [--quick] [...]   # the same, from an installed checkout
    python examples/train_digits.py --help

Data: the 1,797 8x8 digit images that ship inside scikit-learn (``load_digits``, nothing
is downloaded), split 80/20 with a fixed seed. Model: conv 3x3 (32) -> relu -> max-pool 2,
conv 3x3 (64) -> relu -> max-pool 2, dropout 0.25, linear 256 -> 10, built with ``fj.nn``;
loss: cross-entropy; optimizer: ``fj.optim.adam`` with a ``fj.optim.cosine_decay`` schedule
(a short warmup, then a cosine to 0); augmentation: ``fj.augment.random_affine`` (small
rotations, scalings and shifts; no flips, which turn a 2 into an S-like shape). The dropout
mask of step k comes from ``fj.random.fold_in(key, k)`` inside the jitted step: it is
computed in the kernel that applies it and never stored.

``--distributed`` trains data-parallel over the processes of an MPI launch
(``mpiexec -n 2 python examples/train_digits.py --distributed``; started without a
launcher it re-launches itself under the venv's ``mpiexec`` with ``--processes`` ranks):
every rank starts from rank 0's parameters, takes its 1/N of each global batch
(``fj.distributed.shard_batches``, one shared permutation), and the step averages the
gradients, loss and accuracy over the ranks with one MPI call (``fj.distributed.pmean`` of
them all, one bucket; ``--bucket-bytes B`` bounds a bucket, ``--overlap`` starts each
bucket's MPI call as soon as its gradients exist, while the rest of the backward pass
runs). Rank 0 prints and evaluates; the eager comparison, the profile and the plot are
skipped.

``train_step`` (value_and_grad of the loss and the Adam update) is one ``fj.jit``
function: its first call traces it to IR, differentiates the IR, optimizes and fuses it
into a few dozen kernels and compiles them with Numba. The demo writes the IR of every
stage (traced, optimized, fused), every kernel's source and the fusion report into the
dump directory, prints the test accuracy, the compile time and ``fj.compare`` of one
training step (NumPy eager vs fusejit unfused vs fused), and saves a PNG of the curves
and the comparison.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

import fusejit as fj
import fusejit.numpy as fnp
from fusejit import nn

MODEL = {
    "conv1": nn.Conv2d(1, 32, 3),
    "conv2": nn.Conv2d(32, 64, 3),
    "head": nn.Linear(64 * 2 * 2, 10),
}


DROPOUT = 0.25


def model(params, images, key=None):
    """Logits [N, 10] of images [N, 1, 8, 8] (float32); with a ``key``, in training mode
    (dropout before the head). Each block is a named scope: the IR text, the fusion report
    and the profile name kernels by it (``block1/conv2d + block1/relu``)."""
    with fj.named_scope("block1"):
        h = nn.conv2d(images, params["conv1"]["w"], params["conv1"]["b"], padding=1)  # [N, 32, 8, 8]
        h = nn.max_pool2d(nn.relu(h), 2)  # [N, 32, 4, 4]
    with fj.named_scope("block2"):
        h = nn.conv2d(h, params["conv2"]["w"], params["conv2"]["b"], padding=1)  # [N, 64, 4, 4]
        h = nn.max_pool2d(nn.relu(h), 2)  # [N, 64, 2, 2]
    h = fnp.reshape(h, (h.shape[0], -1))
    h = nn.dropout(h, DROPOUT, key, deterministic=key is None)
    return nn.linear(h, params["head"]["w"], params["head"]["b"], name="head")


def loss_fn(params, images, labels, key):
    logits = model(params, images, key)
    return nn.cross_entropy(logits, labels), logits


def make_optimizer(base_lr: float, total_steps: int):
    """Adam whose learning rate warms up over the first 5% of the steps, then decays from
    ``base_lr`` to 0 (cosine): a schedule of the step count kept in the optimizer state."""
    return fj.optim.adam(fj.optim.cosine_decay(base_lr, total_steps, warmup_steps=total_steps // 20))


def make_train_step(base_lr: float, total_steps: int, distributed: bool = False, bucket_bytes: int | None = None,
                    overlap: bool = False):
    """The training step: the learning rate and the dropout key are computed inside the
    step from the optimizer's count. ``distributed``: the gradients, loss and accuracy
    are averaged over the ranks (one message, or one per ``bucket_bytes``; ``overlap``:
    ``fj.distributed.pmean``'s) and each rank draws its own dropout masks."""
    optimizer = make_optimizer(base_lr, total_steps)

    def train_step(params, opt_state, images, labels, key):
        """One step: loss and gradients, then the Adam update; all of it one jitted call."""
        step_key = fj.random.fold_in(key, opt_state["count"])
        if distributed:
            step_key = fj.random.fold_in(step_key, fj.distributed.axis_index())
        (loss, logits), grads = fj.value_and_grad(loss_fn, has_aux=True)(params, images, labels, step_key)
        acc = nn.accuracy(logits, labels)
        if distributed:
            grads, loss, acc = fj.distributed.pmean((grads, loss, acc), bucket_bytes=bucket_bytes, overlap=overlap)
        params, opt_state = optimizer.update(grads, opt_state, params)
        return params, opt_state, loss, acc

    return train_step


def eval_step(params, images, labels):
    logits = model(params, images)
    return nn.cross_entropy(logits, labels), nn.accuracy(logits, labels)


def load_data(seed: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # [1797, 1, 8, 8] in [0, 1]
    labels = digits.target.astype(np.int32)
    return train_test_split(images, labels, test_size=0.2, random_state=seed, stratify=labels)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="fusejit demo", description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=15, help="passes over the training set (default 15)")
    p.add_argument("--batch-size", type=int, default=64, help="images per training step (default 64)")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam's initial learning rate, decayed to 0 (default 1e-2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the model and the augmentation")
    p.add_argument("--no-augment", action="store_true", help="train on the images as they are")
    p.add_argument("--out", default="fusejit-demo", help="directory for the PNG and the trace (default ./fusejit-demo)")
    p.add_argument("--dump", default=None, help="IR dump directory (default: OUT/ir_dump)")
    p.add_argument("--quick", action="store_true", help="a few steps and short measurements (what the tests run)")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks of an MPI launch (mpiexec -n N ...); "
                        "without a launcher, re-launch under mpiexec with --processes ranks")
    p.add_argument("--processes", type=int, default=2, help="ranks of the re-launch of --distributed (default 2)")
    p.add_argument("--bucket-bytes", type=int, default=None,
                   help="--distributed: at most this many bytes of gradients per MPI call (default: one call)")
    p.add_argument("--overlap", action="store_true",
                   help="--distributed: overlap each bucket's MPI call with the rest of the backward pass")
    return p.parse_args(argv)


def relaunch_under_mpiexec(args, argv) -> None:
    """Replaces this process by ``mpiexec -n P python <this file> <argv>`` (the venv's
    mpiexec, from the ``distributed`` extra, else the one on PATH)."""
    from fusejit.ir.communicator import launched_by_mpi

    if launched_by_mpi() or args.processes == 1:
        return
    here = Path(sys.executable).parent / "mpiexec"
    mpiexec = str(here) if here.exists() else shutil.which("mpiexec")
    if mpiexec is None:
        raise SystemExit("--distributed needs mpiexec: pip install -e '.[distributed]' (mpi4py and MPICH)")
    command = [mpiexec, "-n", str(args.processes), sys.executable, str(Path(__file__).resolve()), *argv]
    print("launching:", " ".join(command), flush=True)
    os.execv(mpiexec, command)


def dump_directory(root: Path, before: set[str], name: str) -> Path | None:
    """The dump directory ``FUSEJIT_DUMP`` created for function ``name`` since ``before``."""
    new = sorted(p for p in root.glob(f"*_{name}") if p.name not in before)
    return new[-1] if new else None


def describe_dump(path: Path) -> list[str]:
    stages = sorted(p.name for p in path.glob("*.ir"))
    kernels = sorted((path / "kernels").glob("*.py"))
    return [
        f"  traced:        {path / stages[0]}",
        f"  optimized:     {', '.join(stages[1:-1])}  (one file per pass)",
        f"  fused:         {path / stages[-1]}",
        f"  kernels:       {path / 'kernels'}/  ({len(kernels)} Numba sources)",
        f"  fusion report: {path / 'fusion_report.txt'}",
    ]


def plot(path: Path, history: dict, comparison) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc, ax_cmp) = plt.subplots(1, 3, figsize=(15, 4.2))
    losses = np.array(history["loss"])
    ax_loss.plot(losses, color="#90caf9", lw=0.8, label="per step")
    if len(losses) >= 10:
        k = max(5, len(losses) // 30)
        ax_loss.plot(np.arange(k - 1, len(losses)), np.convolve(losses, np.ones(k) / k, "valid"),
                     color="#1565c0", label=f"mean of {k}")
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("training step")
    ax_loss.set_title("training loss (cross-entropy)")
    ax_loss.legend()
    epochs = np.arange(1, len(history["test_acc"]) + 1)
    ax_acc.plot(epochs, np.array(history["train_acc"]) * 100, "o-", label="train (augmented batches)")
    ax_acc.plot(epochs, np.array(history["test_acc"]) * 100, "s-", label="test")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_title("accuracy")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend()
    comparison.plot(ax_cmp)
    ax_cmp.set_title("one training step: eager vs jit")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    dist = fj.distributed
    if args.distributed:
        relaunch_under_mpiexec(args, argv)
        dist.initialize()
    ranks = dist.size() if args.distributed else 1
    main_rank = dist.is_main()
    say = print if main_rank else (lambda *a, **k: None)
    from tqdm import tqdm

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dump_root = Path(args.dump) if args.dump else out / "ir_dump"
    dump_root.mkdir(parents=True, exist_ok=True)
    epochs = 1 if args.quick else args.epochs
    max_steps = 6 if args.quick else None

    x_train, x_test, y_train, y_test = load_data(args.seed)
    rng = np.random.default_rng(args.seed)
    params = nn.init_model(rng, MODEL)
    batch = args.batch_size
    if args.distributed:
        if batch % ranks:
            raise SystemExit(f"--batch-size {batch} must be a multiple of the {ranks} ranks")
        params = dist.broadcast_params(params)  # every rank starts from rank 0's parameters
        rng = np.random.default_rng([args.seed, dist.rank()])  # each rank augments its own images
    steps_per_epoch = len(x_train) // batch  # the last partial batch is dropped: one signature
    if max_steps:
        steps_per_epoch = min(steps_per_epoch, max_steps)
    opt_state = make_optimizer(args.lr, epochs * steps_per_epoch).init(params)
    train_step = fj.jit(make_train_step(args.lr, epochs * steps_per_epoch, args.distributed, args.bucket_bytes,
                                        args.overlap))
    dropout_key = fj.random.key(args.seed)
    evaluate = fj.jit(eval_step)
    say(f"digits: {len(x_train)} training and {len(x_test)} test images of 8x8; "
        f"CNN with {nn.param_count(params):,} parameters; batch {batch}, {epochs} epoch{'s' * (epochs != 1)} of "
        f"{steps_per_epoch} steps, augmentation {'off' if args.no_augment else 'on'}"
        + (f"; {ranks} ranks of {batch // ranks} images each" if args.distributed else ""))
    local = batch // ranks  # images per rank and step

    # Compile both steps up front, writing the train step's IR and kernels to the dump.
    before = {p.name for p in dump_root.iterdir()}
    start = time.perf_counter()
    with fj.config.override(dump_dir=str(dump_root) if main_rank else None):
        compiled = train_step.lower(params, opt_state, x_train[:local], y_train[:local], dropout_key).compile()
    train_compile_s = time.perf_counter() - start
    start = time.perf_counter()
    evaluate.lower(params, x_test, y_test).compile()
    eval_compile_s = time.perf_counter() - start
    dumped = dump_directory(dump_root, before, "train_step")
    say(f"compiled train_step in {train_compile_s:.1f} s ({len(compiled.kernels)} kernels) and "
        f"eval_step in {eval_compile_s:.1f} s (a second run loads the kernels from the on-disk cache)")

    history: dict[str, list[float]] = {"loss": [], "train_acc": [], "test_acc": [], "test_loss": []}
    bar = tqdm(total=epochs * steps_per_epoch, unit="step", desc="training", mininterval=0.25,
               dynamic_ncols=True, disable=not main_rank)
    step_times = []
    dist.stats().reset()
    train_start = time.perf_counter()
    for epoch in range(epochs):
        if args.distributed:  # one permutation shared by the ranks; each takes its part of a batch
            shards = dist.shard_batches(len(x_train), batch, seed=args.seed, epoch=epoch)
        else:
            order = rng.permutation(len(x_train))
            shards = (order[s * batch : (s + 1) * batch] for s in range(steps_per_epoch))
        hits = []
        for _, idx in zip(range(steps_per_epoch), shards, strict=False):
            images, labels = x_train[idx], y_train[idx]
            if not args.no_augment:
                images = fj.augment.random_affine(images, rng, max_rotation=10.0, scale=(0.9, 1.1),
                                                  max_translation=0.1)
            step_start = time.perf_counter()
            params, opt_state, loss, acc = train_step(params, opt_state, images, labels, dropout_key)
            step_times.append(time.perf_counter() - step_start)
            history["loss"].append(float(loss))
            hits.append(float(acc))
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss):.3f}", acc=f"{float(acc):.2f}", refresh=False)
        test_loss, test_acc = evaluate(params, x_test, y_test)
        history["train_acc"].append(float(np.mean(hits)))
        history["test_acc"].append(float(test_acc))
        history["test_loss"].append(float(test_loss))
        bar.set_postfix(epoch=epoch + 1, loss=f"{history['loss'][-1]:.3f}", test_acc=f"{float(test_acc):.3f}")
    bar.close()
    train_s = time.perf_counter() - train_start
    steps = epochs * steps_per_epoch
    sent = dist.stats()
    if not main_rank:
        return 0

    print(f"\ntest accuracy: {history['test_acc'][-1] * 100:.2f}% on {len(x_test)} held-out digits "
          f"(test loss {history['test_loss'][-1]:.4f})")
    print(f"training: {steps} steps in {train_s:.1f} s ({steps / train_s:.0f} steps/s, augmentation included); "
          f"train_step median {np.median(step_times) * 1e3:.2f} ms")
    print(f"compile time: {train_compile_s + eval_compile_s:.1f} s "
          f"(train_step {train_compile_s:.1f} s, eval_step {eval_compile_s:.1f} s)")
    if dumped is not None:
        print(f"IR dump of train_step: {dumped}/")
        print("\n".join(describe_dump(dumped)))

    if args.distributed:
        print(f"distributed: {ranks} rank{'s' * (ranks != 1)} of {local} images per step; MPI calls per step: "
              f"{(sent.calls - sent.checks) / steps:g} collective{'s' * (sent.calls - sent.checks != steps)} and "
              f"{sent.checks / steps:g} agreement check{'s' * (sent.checks != steps)}"
              f"{' (overlapped with the backward pass)' if args.overlap else ''}; "
              f"bytes sent per step by rank 0: {sent.bytes_sent / steps:,.0f}\n(the eager comparison, "
              "the profile and the plot run without --distributed)")
        return 0

    # One training step three ways, on the batch shape the loop used.
    images, labels = x_train[:batch], y_train[:batch]
    print("\ncomparing one training step (NumPy eager runs the same code without jit) ...", flush=True)
    comparison = fj.compare(train_step, params, opt_state, images, labels, dropout_key,
                            repeat=3 if args.quick else None)
    print(comparison)

    profile = compiled.profile(params, opt_state, images, labels, dropout_key, repeat=3 if args.quick else None)
    trace_path = profile.to_chrome_trace(out / "train_step_trace.json")
    print(f"\nwhere the fused step's time goes (compiled.profile(...); all kernels: print(profile)):\n"
          f"{profile.table(top=5)}")
    print(f"Chrome/Perfetto trace: {trace_path}")

    png = out / "digits_demo.png"
    plot(png, history, comparison)
    print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
