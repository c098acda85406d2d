"""A direct NumPy/SciPy transcription of the PGGAN SWD (`metrics/sliced_wasserstein.py`), for checking
`cocosnet.metrics.swd` in the tests and timing it against the torch version in `bench/metrics.py`."""

import numpy as np
import scipy.ndimage

from cocosnet.metrics.swd import resolutions

GAUSS = np.float32([[1, 4, 6, 4, 1], [4, 16, 24, 16, 4], [6, 24, 36, 24, 6], [4, 16, 24, 16, 4],
                    [1, 4, 6, 4, 1]]) / 256.0


def np_pyr_down(x):
    return scipy.ndimage.convolve(x, GAUSS[None, None], mode="mirror")[:, :, ::2, ::2]


def np_pyr_up(x):
    s = x.shape
    res = np.zeros((s[0], s[1], s[2] * 2, s[3] * 2), x.dtype)
    res[:, :, ::2, ::2] = x
    return scipy.ndimage.convolve(res, GAUSS[None, None] * 4.0, mode="mirror")


def np_pyramid(x, levels):
    pyr = [np.float32(x)]
    for _ in range(1, levels):
        pyr.append(np_pyr_down(pyr[-1]))
        pyr[-2] -= np_pyr_up(pyr[-1])
    return pyr


def np_descriptors(level, centres, per_image=128, size=7):
    n = centres.shape[0]
    h = size // 2
    nhood, chan, y, x = np.ogrid[0:n, 0:3, -h:h + 1, -h:h + 1]
    img = nhood // per_image
    y = y + centres[:, 0].reshape(n, 1, 1, 1)
    x = x + centres[:, 1].reshape(n, 1, 1, 1)
    s = level.shape
    return level.flat[((img * s[1] + chan) * s[2] + y) * s[3] + x]


def np_finalize(desc):
    desc = desc - np.mean(desc, axis=(0, 2, 3), keepdims=True)
    desc /= np.std(desc, axis=(0, 2, 3), keepdims=True)
    return desc.reshape(desc.shape[0], -1)


def np_sliced(a, b, dirs):
    results = []
    for d in dirs:
        pa, pb = np.sort(a @ d, axis=0), np.sort(b @ d, axis=0)
        results.append(np.mean(np.abs(pa - pb)))
    return np.mean(results)


def np_swd(real, fake, centres_real, centres_fake, dirs):
    """real/fake uint8 (N, H, W, 3); the reference computation, level by level."""
    levels = resolutions(real.shape[1], real.shape[2])
    pr = np_pyramid(real.transpose(0, 3, 1, 2), len(levels))
    pf = np_pyramid(fake.transpose(0, 3, 1, 2), len(levels))
    dist = [np_sliced(np_finalize(np_descriptors(pr[i], centres_real[i])),
                      np_finalize(np_descriptors(pf[i], centres_fake[i])), dirs[i]) * 1e3
            for i in range(len(levels))]
    return dist + [np.mean(dist)]
