"""A small neural-network force-matching baseline (CGnet-like), numpy only; benchmark code, not library code.

Energy network on the GDML descriptor d(x) (inverse distances + chiral dihedral sines, ``cgdml.features``):

    z = (d - mu) / s                      (standardised with the training descriptors' mean and std)
    h_0 = z,  h_l = tanh(W_l h_{l-1} + b_l)  for l = 1..L
    E(x) = kT * w_out . h_L                (kJ/mol; the kT output scale keeps the weights O(1))
    F(x) = -J(x)^T grad_d E = -J(x)^T (grad_z E / s)    (J = dd/dx, kJ/mol/nm)

It is trained by force matching: mean squared error of F against prior-subtracted instantaneous forces, Adam on
minibatches, early stopping on a held-out validation split (the parameters with the best validation MSE are
kept). The full model force is prior force + F, exactly as for GDML. scikit-learn's MLPRegressor fits
outputs, not their gradients, so it cannot do this; the parameter gradient of the force loss is derived by hand:

with u = dL/dz (n, D), the loss gradient equals the parameter gradient of Q = sum_n u_n . grad_z E(z_n)
at fixed u, i.e. of the directional derivative of E along u. It is computed by a forward tangent pass
(a'_l = W_l h'_{l-1}, h'_l = (1 - h_l^2) a'_l, h'_0 = u, Q = kT w_out . h'_L) followed by reverse-mode
through both the primal and the tangent path (see ``_param_grad``). ``self_check`` verifies it, and
F = -dE/dx, against central finite differences.
"""
from __future__ import annotations

import time

import numpy as np

from cgdml.features import chain_quads, descriptor, descriptor_jacobian, descriptor_vjp


class MLPForceField:
    """tanh MLP energy on standardised descriptors, trained by force matching.

    hidden: units per hidden layer; lr, batch_size: Adam step and minibatch size; max_epochs, patience:
    early-stopping limits (epochs without a better validation MSE); val_fraction: held-out share of the
    frames; max_time_s: wall-time cap on training; l2: Gaussian prior on the weights (not biases), the
    loss being force MSE + l2 * mean(labels^2) / n_train * sum(w^2) (scale-free: it weighs like l2 extra frames
    of label variance, and fades as the data grow); chiral: the descriptor includes the sines of the chain
    dihedrals (``cgdml.features.chain_quads``).
    Learned: ``params_`` (list of W, b per layer, then w_out), ``quads_``, ``mu_``, ``s_``, ``kT_``,
    ``history_``, ``best_epoch_``, ``val_mse_``, ``train_s_``.
    """

    def __init__(self, hidden=(64, 64), lr=1e-3, batch_size=128, max_epochs=3000, patience=60,
                 val_fraction=0.1, max_time_s=150.0, l2=1.5, chiral=True, seed=0):
        self.hidden = hidden
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.val_fraction = val_fraction
        self.max_time_s = max_time_s
        self.l2 = l2
        self.chiral = chiral
        self.seed = seed

    # ------------------------------------------------------------------------------------------ network
    def _init_params(self, n_in, rng):
        params, fan_in = [], n_in
        for h in self.hidden:
            params += [rng.normal(0.0, np.sqrt(1.0 / fan_in), (h, fan_in)), np.zeros(h)]
            fan_in = h
        params.append(rng.normal(0.0, np.sqrt(1.0 / fan_in), fan_in))
        return params

    def _forward(self, params, Z):
        """Hidden activations [h_0 = Z, h_1, ..., h_L] and deltas [d_1..d_L] with grad_z E = d_1 @ W_1."""
        hs = [Z]
        n_layers = len(self.hidden)
        for layer in range(n_layers):
            W, b = params[2 * layer], params[2 * layer + 1]
            hs.append(np.tanh(hs[-1] @ W.T + b))
        deltas = [None] * n_layers
        d = self.kT_ * params[-1] * (1.0 - hs[-1] ** 2)
        deltas[-1] = d
        for layer in range(n_layers - 1, 0, -1):
            d = (d @ params[2 * layer]) * (1.0 - hs[layer] ** 2)
            deltas[layer - 1] = d
        return hs, deltas

    def _energy_grad_z(self, params, Z):
        """E (n,) kJ/mol and grad_z E (n, D)."""
        hs, deltas = self._forward(params, Z)
        return self.kT_ * hs[-1] @ params[-1], deltas[0] @ params[0]

    def _param_grad(self, params, hs, deltas, U):
        """Gradient of Q = sum_n U_n . grad_z E(Z_n) with respect to every parameter (U held fixed)."""
        n_layers = len(self.hidden)
        # forward tangent: h'_0 = U, a'_l = W_l h'_{l-1}, h'_l = (1 - h_l^2) a'_l
        hdots, adots = [U], []
        for layer in range(n_layers):
            a = hdots[-1] @ params[2 * layer].T
            adots.append(a)
            hdots.append((1.0 - hs[layer + 1] ** 2) * a)
        grads = [None] * len(params)
        grads[-1] = self.kT_ * hdots[-1].sum(0)
        tb = self.kT_ * params[-1][None, :]  # dQ/dh'_L
        hb = np.zeros_like(hs[-1])  # dQ/dh_L
        for layer in range(n_layers - 1, -1, -1):
            h, W = hs[layer + 1], params[2 * layer]
            P = deltas[layer]  # dQ/da'_l = tb * (1 - h^2): equals the primal delta
            hb = hb + tb * adots[layer] * (-2.0 * h)
            Q = hb * (1.0 - h ** 2)  # dQ/da_l
            grads[2 * layer] = P.T @ hdots[layer] + Q.T @ hs[layer]
            grads[2 * layer + 1] = Q.sum(0)
            tb, hb = P @ W, Q @ W
        return grads

    def _loss_and_grad(self, params, Z, J, Y):
        """Force MSE (per component) against Y (n, 3N) and its parameter gradient; J (n, D, 3N)."""
        hs, deltas = self._forward(params, Z)
        gd = (deltas[0] @ params[0]) / self.s_
        resid = -np.einsum("ndk,nd->nk", J, gd) - Y
        loss = float(np.mean(resid ** 2))
        dF = 2.0 * resid / resid.size
        U = -np.einsum("ndk,nk->nd", J, dF) / self.s_
        grads = self._param_grad(params, hs, deltas, U)
        if self.decay_:
            for i in list(range(0, len(params) - 1, 2)) + [len(params) - 1]:
                loss += self.decay_ * float(np.sum(params[i] ** 2))
                grads[i] = grads[i] + 2.0 * self.decay_ * params[i]
        return loss, grads

    def _mse(self, params, Z, J, Y, chunk=4096):
        total = 0.0
        for i in range(0, len(Z), chunk):
            gd = self._energy_grad_z(params, Z[i:i + chunk])[1] / self.s_
            total += float(np.sum((-np.einsum("ndk,nd->nk", J[i:i + chunk], gd) - Y[i:i + chunk]) ** 2))
        return total / Y.size

    # ------------------------------------------------------------------------------------------ fit / predict
    def fit(self, R, F, kT):
        """Train on coordinates R (n, n_beads, 3) nm and prior-subtracted forces F (n, n_beads, 3) kJ/mol/nm;
        ``kT`` in kJ/mol sets the energy output scale. Returns self."""
        t0 = time.perf_counter()
        rng = np.random.default_rng([self.seed, 31])
        R = np.asarray(R, dtype=np.float64)
        n = len(R)
        self.quads_ = chain_quads(R.shape[1]) if self.chiral else np.zeros((0, 4), dtype=np.int64)
        D, J = descriptor_jacobian(R, self.quads_)
        Y = np.asarray(F, dtype=np.float64).reshape(n, -1)
        perm = rng.permutation(n)
        n_val = max(1, int(round(self.val_fraction * n)))
        val, tr = perm[:n_val], perm[n_val:]
        self.mu_ = D[tr].mean(0)
        self.s_ = D[tr].std(0) + 1e-12
        self.kT_ = float(kT)
        self.decay_ = self.l2 * float(np.mean(Y[tr] ** 2)) / len(tr)
        Z = (D - self.mu_) / self.s_
        params = self._init_params(D.shape[1], rng)
        m = [np.zeros_like(p) for p in params]
        v = [np.zeros_like(p) for p in params]
        b1, b2, eps, step = 0.9, 0.999, 1e-8, 0
        best = (self._mse(params, Z[val], J[val], Y[val]), [p.copy() for p in params], 0)
        history, since_best, epoch = [], 0, 0
        for epoch in range(1, self.max_epochs + 1):
            order = rng.permutation(tr)
            train_loss = 0.0
            for i in range(0, len(order), self.batch_size):
                idx = order[i:i + self.batch_size]
                loss, grads = self._loss_and_grad(params, Z[idx], J[idx], Y[idx])
                train_loss += loss * len(idx)
                step += 1
                for p, g, mm, vv in zip(params, grads, m, v):
                    mm *= b1
                    mm += (1 - b1) * g
                    vv *= b2
                    vv += (1 - b2) * g * g
                    p -= self.lr * (mm / (1 - b1 ** step)) / (np.sqrt(vv / (1 - b2 ** step)) + eps)
            val_mse = self._mse(params, Z[val], J[val], Y[val])
            history.append((train_loss / len(tr), val_mse))
            if val_mse < best[0]:
                best, since_best = (val_mse, [p.copy() for p in params], epoch), 0
            else:
                since_best += 1
            if since_best >= self.patience or time.perf_counter() - t0 > self.max_time_s:
                break
        self.val_mse_, self.params_, self.best_epoch_ = best
        self.val_prior_mse_ = float(np.mean(Y[val] ** 2))
        self.n_epochs_ = epoch
        self.history_ = np.array(history)
        self.train_s_ = time.perf_counter() - t0
        return self

    def energy_forces(self, R):
        """E (n,) kJ/mol (up to a constant) and the learned forces (n, n_beads, 3) kJ/mol/nm (prior excluded)."""
        R = np.asarray(R, dtype=np.float64)
        Z = (descriptor(R, self.quads_) - self.mu_) / self.s_
        E, gz = self._energy_grad_z(self.params_, Z)
        return E, -descriptor_vjp(R, gz / self.s_, self.quads_)

    def predict_forces(self, R):
        """Learned forces (n, n_beads, 3) kJ/mol/nm, prior excluded."""
        return self.energy_forces(R)[1]


def self_check(seed=0, n_frames=12, n_beads=5, hidden=(7, 5), n_probe=25):
    """Finite-difference checks; returns (max rel. error of parameter gradients, of forces vs -dE/dx).

    Random bent chains (bond 0.15 nm), random weights, random labels; central differences, step 1e-6.
    """
    rng = np.random.default_rng(seed)
    steps = rng.normal(size=(n_frames, n_beads - 1, 3))
    steps = 0.15 * steps / np.linalg.norm(steps, axis=-1, keepdims=True)
    R = np.concatenate([np.zeros((n_frames, 1, 3)), np.cumsum(steps, axis=1)], axis=1)
    net = MLPForceField(hidden=hidden)
    net.quads_ = chain_quads(n_beads)
    D, J = descriptor_jacobian(R, net.quads_)
    net.mu_, net.s_, net.kT_, net.decay_ = D.mean(0), D.std(0) + 0.1, 2.5, 0.7
    Z = (D - net.mu_) / net.s_
    params = net._init_params(D.shape[1], rng)
    params = [p + 0.3 * rng.normal(size=p.shape) for p in params]  # away from the symmetric start
    Y = rng.normal(scale=50.0, size=(n_frames, 3 * n_beads))
    _, grads = net._loss_and_grad(params, Z, J, Y)
    h, worst_p = 1e-6, 0.0
    for _ in range(n_probe):
        k = rng.integers(len(params))
        i = tuple(rng.integers(s) for s in params[k].shape)
        old = params[k][i]
        params[k][i] = old + h
        lp = net._loss_and_grad(params, Z, J, Y)[0]
        params[k][i] = old - h
        lm = net._loss_and_grad(params, Z, J, Y)[0]
        params[k][i] = old
        fd = (lp - lm) / (2 * h)
        worst_p = max(worst_p, abs(fd - grads[k][i]) / max(abs(fd), abs(grads[k][i]), 1e-3))
    net.params_ = params
    E, Fp = net.energy_forces(R)
    worst_f = 0.0
    for _ in range(n_probe):
        f, a, c = rng.integers(n_frames), rng.integers(n_beads), rng.integers(3)
        Rp, Rm = R.copy(), R.copy()
        Rp[f, a, c] += h
        Rm[f, a, c] -= h
        fd = -(net.energy_forces(Rp[f:f + 1])[0][0] - net.energy_forces(Rm[f:f + 1])[0][0]) / (2 * h)
        worst_f = max(worst_f, abs(fd - Fp[f, a, c]) / max(abs(fd), abs(Fp[f, a, c]), 1e-3))
    return worst_p, worst_f


if __name__ == "__main__":
    print("max relative FD error: parameter gradients %.2e, forces %.2e" % self_check())
