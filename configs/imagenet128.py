"""ImageNet at 128 px: the SAGAN paper's setup (Zhang et al. 2018), 1,000 classes.

Read from the paper and from its official TF code (brain-research/self-attention-gan:
`generator_test_64` / `discriminator_test_64`, and `generator_test` /
`discriminator_test`, the `--generator_type test --discriminator_type test` of its
README; `model.py`, `train_imagenet.py`, `eval_imagenet.py`):

- G: z of 128 -> SN dense to 4x4x1024, up-blocks of 1024, 512, 256, 128 and 64 channels
  (8 to 128 px), BN, ReLU, SN conv3x3 -> 3, tanh; the blocks' BNs are conditional on
  the 1,000 classes, the last BN is not.
  D: the optimized block of 64 channels (64 px), blocks of 128, 256, 512, 1024 (4 px)
  and 1024 without downsampling, ReLU, sum pooling, SN dense to 1 plus the projection
  over the 1,000 classes. gf_dim = df_dim = 64; spectral norm everywhere in G and D.
- Self-attention at 64x64 in both (default): after G's fourth block (128 channels) and
  after D's optimized block (64 channels), as the code's `generator_test_64` /
  `discriminator_test_64`. `attention=32` puts it at 32x32 instead, as the code's README
  command runs it (`generator_test`, `discriminator_test`: after G's third block, 256
  channels, and after D's first block after the optimized one, 128 channels). Why 64 is
  the default: the paper's headline result, IS 52.52 and FID 18.65 (abstract, Table 2),
  is its Table 1 row "SAGAN feat64"; "SAGAN feat32" has IS 51.43, FID 18.28 there
  (arXiv 1805.08318, Table 1: the attention's position, 1M iterations each). Checked:
  the abstract's figures (arXiv, ICML 2019 and ar5iv pages); a benchmark list of the
  paper (wizwand.com) that gives FID 18.28 at ImageNet 128 beside 18.65. Not checked
  against a stored copy: Table 1 itself, whose rows are given here as remembered.
- The attention's four 1x1 convs without biases (`model.attention_bias=False`) and G's
  last BN plain, with its own affine (`model.g_out_bn='plain'`), as the code's
  `sn_non_local_block_sim` and `g_bn`.
- Hinge loss, Adam(b1 0, b2 0.9), G 1e-4 / D 4e-4, one D step per G step, batch 256
  (the code: 4 GPUs x 64), 1M iterations.
- IS and FID of 50,000 samples. The code takes IS as one split over all 50k (tf.gan's
  `classifier_score_from_logits`), hence `eval.splits = 1`; its FID compares them with
  50,000 real images (ours with the whole training set's statistics). Scored is G as
  trained: neither the paper nor the code has an EMA of G.

The paper's result (Table 2): IS 52.52, FID 18.65, with the 2015 TF Inception, as ours.

Where this port differs from the official code (`tests/test_imagenet128.py` checks the
architecture against it: every layer's parameter count equals the official one): its BN
statistics are per GPU (64 images), here of the global batch (`train.bn_sync`); its
conditional BN's eps is 1e-5 (ours 1e-4) and its running statistics decay by 0.999 a
step (ours 0.9; its last, plain BN's by 0.9999, eps 1e-5 as ours); its Adam's b2
is TF's default 0.999, the paper's 0.9 here; its SN keeps `u` between steps and
differentiates through the power step; its training loop stops at 2M steps, the paper
and its README say 1M.

Data: TFDS `imagenet2012` (`sagan_jax/data/tfds_datasets.py`), train split (1,281,167
images), centre square resized to 128 px, streamed (`data.pipeline='streamed'`,
sagan_jax/data/streaming.py): each host decodes only the rows of each batch that its
chips train on, from TFDS's ArrayRecord files, so no host holds the 63 GB of decoded
images, and nothing is decoded again at a restart. Two grain worker processes per host
decode (`data.workers=2`): a host of a v4-32 trains on 64 images a step, 356 a second at
the 179.6 ms of the original's step on one H100, and a worker here decodes 272-661 a
second (benchmarks/RESULTS.md, 2026-12-04). TFDS cannot download ImageNet:
prepare it once as ArrayRecord into a bucket that all hosts read (`tfds build
imagenet2012 --file_format=array_record --manual_dir=DIR_WITH_THE_TARS
--data_dir=gs://BUCKET/tensorflow_datasets`, DIR_WITH_THE_TARS holding
ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar) and pass that as --data-dir; or,
on one machine, pass the tars' folder as --config.data.manual_dir and the run prepares
it; without either the run stops at the start with one line saying so. A copy prepared
before as TFRecord stops it with one line that says how to convert it. 1M steps at
batch 256 are ~200 epochs. On a v4-32 (4 workers, 16 chips) or a v5e-16 (4 workers, 16
chips):

  launch/tpu_pod.sh --name=sagan-in128 --zone=us-central2-b --accelerator-type=v4-32 \\
      --config=configs/imagenet128.py --workdir=gs://BUCKET/imagenet128 \\
      --data-dir=gs://BUCKET/tensorflow_datasets --logs
  launch/tpu_pod.sh --queued --name=sagan-in128 --zone=us-west4-a \\
      --accelerator-type=v5litepod-16 --config=configs/imagenet128.py \\
      --workdir=gs://BUCKET/imagenet128 --data-dir=gs://BUCKET/tensorflow_datasets
  python -m sagan_jax.main --config=configs/imagenet128.py:attention=32 --workdir=...
  python -m sagan_jax.main --config=configs/imagenet128.py:test --workdir=/tmp/t  # tiny
"""
from configs import common

NUM_STEPS = 1_000_000
# `attention=` -> the resolution of G's and D's attention block (the official functions).
ATTENTION = {32: (32,), 64: (64,)}


def get_config(arg=None):
    """`arg`: optional 'attention=32|64' (default 64) and/or 'test'."""
    args = common.parse_arg(arg, {"attention": int, "test": bool})
    c = common.get_base_config()
    c.data.name = "imagenet2012"
    c.data.pipeline = "streamed"
    c.data.workers = 0 if args.get("test") else 2  # The test variant decodes in threads.
    c.model.resolution = 128
    attention = ATTENTION[common.choose(args.get("attention"), 64, ATTENTION)]
    c.model.g_attention = c.model.d_attention = attention
    c.model.attention_bias = False
    c.model.g_out_bn = "plain"
    c.optim.g_lr, c.optim.d_lr = common.TTUR_LRS
    c.train.batch_size = 256
    c.train.num_steps = NUM_STEPS
    c.train.sample_with_ema = False  # Scores and grids of G as trained, as the paper's.
    c.checkpoint.every_steps = 10_000
    c.log.sample_every_steps = 5_000
    c.log.grid_classes = 16
    c.eval.every_steps = 50_000
    c.eval.num_samples, c.eval.splits = 50_000, 1  # The code's IS: one split of 50k.
    common.finish(c, args)
    return c
