//! The block's element-wise ops: the CPU's one-pass kernels against the
//! generic tensor-op definitions, and each autodiff node against burn's
//! autodiff of those definitions.
use burn::backend::{Autodiff, Flex};
use burn::tensor::{backend::Backend, DType, Distribution, ElementConversion, Tensor, TensorData};

use crate::{pointwise, ModelBackend};

type AB = Autodiff<Flex>;

/// max |a - b| / max |b|.
fn rel_diff<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    let scale = b.clone().abs().max().into_scalar().elem::<f32>().max(1e-12);
    (a - b).abs().max().into_scalar().elem::<f32>() / scale
}

fn rand<const D: usize>(dims: [usize; D], std: f64) -> Tensor<Flex, D> {
    Tensor::random(dims, Distribution::Normal(0.0, std), &Default::default())
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

/// The modulation's vectors as the block makes them: chunks (views) of a
/// [b, t, 1, 6d] tensor.
fn chunks(b: usize, t: usize, d: usize) -> Vec<Tensor<Flex, 4>> {
    rand([b, t, 1, 6 * d], 0.5).chunk(6, 3)
}

#[test]
fn gelu_kernel_matches_the_tanh_formula_and_its_gradient() {
    Flex::seed(&Default::default(), 5);
    // Normal values, then the tails and zero, where tanh saturates.
    let mut xs = values(rand([4096], 3.0));
    xs.extend([0.0, -0.0, 1e-6, -1e-6, 9.0, -9.0, 30.0, -30.0, 90.0, -90.0]);
    let x =
        Tensor::<Flex, 1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &Default::default());
    let fast = values(Flex::gelu_tanh(x.clone()));
    let formula = values(pointwise::gelu_tanh(x.clone()));
    for ((x, a), b) in xs.iter().zip(fast).zip(formula) {
        let xd = *x as f64;
        let u = (2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd.powi(3));
        // 0.5 x (1 + tanh u) = x / (1 + e^(-2u)), which keeps the left
        // tail's digits in f64 where 1 + tanh u cancels.
        let truth = xd / (1.0 + (-2.0 * u).exp());
        // The kernel keeps relative precision in the left tail too
        // (x e^(-2|u|): u's rounding grows by |2u| there, hence 1e-5);
        // burn's f32 formula loses the tail to cancellation in 1 + tanh u,
        // so it is held to 1e-6 absolute.
        assert!(
            (a as f64 - truth).abs() <= 1e-5 * truth.abs() + 1e-37,
            "gelu({x}) = {a}, exact {truth}"
        );
        assert!(
            (b as f64 - truth).abs() <= 1e-6 * truth.abs().max(1.0),
            "formula at {x}: {b}"
        );
    }
    // The gradient: the kernel, burn's autodiff of burn's gelu_approximate
    // and the generic backward formula (what the GPU runs), each against
    // the f64 derivative, relative to the largest gradient.
    let g = rand([xs.len()], 1.0);
    let gs = values(g.clone());
    let truth: Vec<f64> = xs
        .iter()
        .zip(&gs)
        .map(|(x, g)| {
            let (x, c, a) = (*x as f64, (2.0 / std::f64::consts::PI).sqrt(), 0.044715);
            let sig = 1.0 / (1.0 + (-2.0 * c * (x + a * x.powi(3))).exp());
            *g as f64 * (sig + 2.0 * x * sig * (1.0 - sig) * c * (1.0 + 3.0 * a * x * x))
        })
        .collect();
    let scale = truth.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = |got: Tensor<Flex, 1>| {
        values(got)
            .iter()
            .zip(&truth)
            .fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs()))
            / scale
    };
    let xa = Tensor::<AB, 1>::from_inner(x.clone()).require_grad();
    let grads = (burn::tensor::activation::gelu_approximate(xa.clone())
        * Tensor::from_inner(g.clone()))
    .sum()
    .backward();
    let (kernel, autodiff, generic) = (
        err(Flex::gelu_tanh_backward(x.clone(), g.clone())),
        err(xa.grad(&grads).unwrap()),
        err(pointwise::gelu_tanh_backward(x, g)),
    );
    assert!(
        kernel < 5e-7 && autodiff < 2e-6 && generic < 2e-6,
        "{kernel} {autodiff} {generic}"
    );
    assert!(values(Flex::gelu_tanh_backward::<1>(
        Tensor::from_data([f32::MAX, f32::MIN, 0.0], &Default::default()),
        Tensor::ones([3], &Default::default())
    ))
    .iter()
    .all(|v| v.is_finite()));
}

#[test]
fn modulation_and_gated_residual_kernels_equal_the_tensor_ops() {
    Flex::seed(&Default::default(), 6);
    let (b, t, s, d) = (2, 3, 5, 7);
    let m = chunks(b, t, d);
    let x = rand([b, t, s, d], 1.0);
    let y = rand([b, t, s, d], 1.0);
    // Forward: the same operations in the same order, so bitwise equal.
    let fast = Flex::modulate(x.clone(), m[0].clone(), m[1].clone());
    let generic = pointwise::modulate(x.clone(), m[0].clone(), m[1].clone());
    assert_eq!(values(fast), values(generic));
    let fast = Flex::gated_residual(x.clone(), m[2].clone(), y.clone());
    let generic = pointwise::gated_residual(x.clone(), m[2].clone(), y.clone());
    assert_eq!(values(fast), values(generic));
    // Backward: sums over the frame's tokens may add in another order.
    let g = rand([b, t, s, d], 1.0);
    let fast = Flex::modulate_backward(x.clone(), m[1].clone(), g.clone());
    let generic = pointwise::modulate_backward(x.clone(), m[1].clone(), g.clone());
    for (a, b) in fast.into_iter().zip(generic) {
        assert_eq!(a.dims(), b.dims());
        assert!(rel_diff(a, b) < 1e-6);
    }
    let fast = Flex::gated_residual_backward(m[2].clone(), y.clone(), g.clone());
    let generic = pointwise::gated_residual_backward(m[2].clone(), y, g);
    for (a, b) in fast.into_iter().zip(generic) {
        assert_eq!(a.dims(), b.dims());
        assert!(rel_diff(a, b) < 1e-6);
    }
    // Another type takes the generic path.
    let xb = x.clone().cast(DType::BF16);
    let (sh, sc) = (
        m[0].clone().cast(DType::BF16),
        m[1].clone().cast(DType::BF16),
    );
    let fast = Flex::modulate(xb.clone(), sh.clone(), sc.clone());
    assert_eq!(fast.dtype(), DType::BF16);
    assert_eq!(values(fast), values(pointwise::modulate(xb, sh, sc)));
}

/// `sum(w * f(inputs))`'s gradients for every input, under autodiff.
fn grads_of<const N: usize>(
    inputs: [Tensor<Flex, 4>; N],
    w: Tensor<Flex, 4>,
    f: impl Fn([Tensor<AB, 4>; N]) -> Tensor<AB, 4>,
) -> [Tensor<Flex, 4>; N] {
    let inputs = inputs.map(|x| Tensor::<AB, 4>::from_inner(x).require_grad());
    let grads = (f(inputs.clone()) * Tensor::from_inner(w)).sum().backward();
    inputs.map(|x| x.grad(&grads).expect("a gradient"))
}

#[test]
fn each_node_gives_autodiffs_gradients() {
    Flex::seed(&Default::default(), 7);
    let (b, t, s, d) = (2, 3, 4, 6);
    let x = || rand([b, t, s, d], 1.0);
    let v = || rand([b, t, 1, d], 0.5);
    let w = rand([b, t, s, d], 1.0);
    let cases: [(
        &str,
        [Tensor<Flex, 4>; 3],
        fn([Tensor<AB, 4>; 3]) -> Tensor<AB, 4>,
        fn([Tensor<AB, 4>; 3]) -> Tensor<AB, 4>,
    ); 3] = [
        (
            "modulate",
            [x(), v(), v()],
            |[x, sh, sc]| AB::modulate(x, sh, sc),
            |[x, sh, sc]| pointwise::modulate(x, sh, sc),
        ),
        (
            "gated residual",
            [x(), v(), x()],
            |[x, g, y]| AB::gated_residual(x, g, y),
            |[x, g, y]| pointwise::gated_residual(x, g, y),
        ),
        (
            "gelu",
            [x(), x(), x()],
            // Two of the inputs unused: their gradients are zero both ways.
            |[x, a, b]| AB::gelu_tanh(x) + a * 0.0 + b * 0.0,
            |[x, a, b]| pointwise::gelu_tanh(x) + a * 0.0 + b * 0.0,
        ),
    ];
    for (name, inputs, node, reference) in cases {
        let ours = grads_of(inputs.clone(), w.clone(), node);
        let theirs = grads_of(inputs, w.clone(), reference);
        for (i, (a, b)) in ours.into_iter().zip(theirs).enumerate() {
            let diff = rel_diff(a, b.clone());
            let zero = b.abs().max().into_scalar().elem::<f32>() == 0.0;
            assert!(zero || diff < 1e-6, "{name}: input {i} differs by {diff}");
        }
    }
}
