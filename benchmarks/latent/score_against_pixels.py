# Score decoded rollouts against the true pixel frames (not the autoencoder's reconstruction).
import glob, sys, numpy as np, pyarrow.parquet as pq
from safetensors.numpy import load_file
from safetensors import safe_open
run, pixels = sys.argv[1], sys.argv[2]
f = load_file(f'{run}/frames.safetensors')
with safe_open(f'{run}/frames.safetensors', 'np') as h:
    meta = h.metadata()
k = int(meta['context']); ids = meta['clip_ids'].split(',')
clips = {}
for p in glob.glob(f'{pixels}/*.parquet'):
    t = pq.read_table(p).to_pydict()
    for i, cid in enumerate(t['clip_id']):
        if cid in ids:
            clips[cid] = np.frombuffer(t['latents'][i], '<f4').reshape(t['latent_shape'][i])
gen = f['generated']; n, T = gen.shape[:2]
truth = np.stack([clips[c][:T] for c in ids])
def psnr(a, b):
    m = ((a - b) ** 2).mean(axis=(-3, -2, -1))
    return 10 * np.log10(4 / np.maximum(m, 1e-10))
model = psnr(gen[:, k:], truth[:, k:]).mean(0)
copy = psnr(np.repeat(truth[:, k - 1:k], T - k, 1), truth[:, k:]).mean(0)
recon = psnr(f['real'][:, k:], truth[:, k:]).mean(0)
print('vs true pixels: model %.2f dB, copy-last %.2f dB, autoencoder reconstruction %.2f dB; model beats copy on %d of %d frames'
      % (model.mean(), copy.mean(), recon.mean(), (model > copy).sum(), len(model)))
print('per frame model/copy:', ' '.join('%.1f/%.1f' % (a, b) for a, b in zip(model, copy)))
