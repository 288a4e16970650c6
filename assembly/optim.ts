// In-place optimizer updates over flat f32 parameter buffers (A and B of each
// LoRA layer). p: parameters, g: gradients, state buffers as named; n floats each.

/**
 * SGD with momentum and (coupled) weight decay, PyTorch's torch.optim.SGD:
 *   g' = g + wd·p;  v = μ·v + g';  p -= lr·(nesterov ? g' + μ·v : v)
 * v starts at zero, so the first step uses v = g' as PyTorch does.
 */
export function sgdStep(p: usize, g: usize, v: usize, n: i32, lr: f32, momentum: f32, weightDecay: f32, nesterov: i32): void {
  const lrv = f32x4.splat(lr), mu = f32x4.splat(momentum), wd = f32x4.splat(weightDecay);
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const o = <usize>i << 2;
    const pi = v128.load(p + o);
    const gi = f32x4.add(v128.load(g + o), f32x4.mul(wd, pi));
    const vi = f32x4.add(f32x4.mul(mu, v128.load(v + o)), gi);
    v128.store(v + o, vi);
    const step = nesterov ? f32x4.add(gi, f32x4.mul(mu, vi)) : vi;
    v128.store(p + o, f32x4.sub(pi, f32x4.mul(lrv, step)));
  }
  for (; i < n; i++) {
    const o = <usize>i << 2;
    const pi = load<f32>(p + o);
    const gi = load<f32>(g + o) + weightDecay * pi;
    const vi = momentum * load<f32>(v + o) + gi;
    store<f32>(v + o, vi);
    store<f32>(p + o, pi - lr * (nesterov ? gi + momentum * vi : vi));
  }
}

/**
 * AdamW (Loshchilov & Hutter 2019), PyTorch's torch.optim.AdamW:
 *   p *= 1 − lr·wd                      (decoupled weight decay)
 *   m = β1·m + (1 − β1)·g;  v = β2·v + (1 − β2)·g²
 *   p -= lr · (m / bc1) / (√(v / bc2) + ε)      bc1 = 1 − β1^t, bc2 = 1 − β2^t
 */
export function adamwStep(
  p: usize, g: usize, m: usize, v: usize, n: i32,
  lr: f32, beta1: f32, beta2: f32, eps: f32, weightDecay: f32, bc1: f32, bc2: f32,
): void {
  const decay = f32x4.splat(1 - lr * weightDecay);
  const b1 = f32x4.splat(beta1), b1c = f32x4.splat(1 - beta1);
  const b2 = f32x4.splat(beta2), b2c = f32x4.splat(1 - beta2);
  const stepSize = f32x4.splat(lr / bc1);
  const invBc2 = f32x4.splat(1 / bc2);
  const epsv = f32x4.splat(eps);
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const o = <usize>i << 2;
    const gi = v128.load(g + o);
    const mi = f32x4.add(f32x4.mul(b1, v128.load(m + o)), f32x4.mul(b1c, gi));
    const vi = f32x4.add(f32x4.mul(b2, v128.load(v + o)), f32x4.mul(b2c, f32x4.mul(gi, gi)));
    v128.store(m + o, mi);
    v128.store(v + o, vi);
    const denom = f32x4.add(f32x4.sqrt(f32x4.mul(vi, invBc2)), epsv);
    v128.store(p + o, f32x4.sub(f32x4.mul(v128.load(p + o), decay), f32x4.div(f32x4.mul(stepSize, mi), denom)));
  }
  for (; i < n; i++) {
    const o = <usize>i << 2;
    const gi = load<f32>(g + o);
    const mi = beta1 * load<f32>(m + o) + (1 - beta1) * gi;
    const vi = beta2 * load<f32>(v + o) + (1 - beta2) * gi * gi;
    store<f32>(m + o, mi);
    store<f32>(v + o, vi);
    store<f32>(p + o, load<f32>(p + o) * (1 - lr * weightDecay) - (lr / bc1) * mi / (Mathf.sqrt(vi * (1 / bc2)) + eps));
  }
}
