"""A direct float64 NumPy transcription of docs/method.md, independent of ibnorm's code, for tests."""
import numpy as np


def s_power(u, lam):
    return np.sign(u) * ((1 + np.abs(u)) ** lam - 1) / lam


def s_log(u, lam):
    return np.sign(u) * np.log1p(lam * np.abs(u)) / lam


def s_tanh(u, lam):
    return np.tanh(lam * u) / lam


S = {"power": s_power, "log": s_log, "tanh": s_tanh, "none": lambda u, lam: u}


def ib_group(x, op, lam, eps, centered=True, order="compress_then_standardize"):
    """Steps 1-3 of the definition for one group given as a flat float64 array."""
    x = np.asarray(x, dtype=np.float64)
    if centered:
        u = (x - x.mean()) / np.sqrt(x.var() + eps)
    else:
        u = x / np.sqrt(np.mean(x * x) + eps)
    c = S[op](u, lam)
    if order != "compress_then_standardize":
        return c
    if centered:
        return (c - c.mean()) * np.sqrt((u.var() + eps) / (c.var() + eps))
    return c * np.sqrt((np.mean(u * u) + eps) / (np.mean(c * c) + eps))


def ib_layer(x, op, lam, eps, nd=1, centered=True, order="compress_then_standardize"):
    x = np.asarray(x, dtype=np.float64)
    lead = x.shape[: x.ndim - nd]
    flat = x.reshape(int(np.prod(lead)) if lead else 1, -1)
    out = np.stack([ib_group(r, op, lam, eps, centered, order) for r in flat])
    return out.reshape(x.shape)


def ib_group_norm(x, groups, op, lam, eps, order="compress_then_standardize"):
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    flat = x.reshape(n, groups, -1)
    out = np.stack([[ib_group(flat[i, g], op, lam, eps, order=order) for g in range(groups)] for i in range(n)])
    return out.reshape(x.shape)


def ib_batch_train(x, op, lam, eps, order="compress_then_standardize"):
    x = np.asarray(x, dtype=np.float64)
    moved = np.moveaxis(x, 1, 0)
    out = np.stack([ib_group(moved[c].ravel(), op, lam, eps, order=order).reshape(moved[c].shape)
                    for c in range(x.shape[1])])
    return np.moveaxis(out, 0, 1)
