//! Stable dotted names for the float parameters of any burn module
//! (`blocks.3.attn.qkv.weight`), and host copies keyed by them. Checkpoints,
//! the optimizer state and the EMA are all maps from these names.
use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::{ModelError, Result};

/// A float tensor on the host, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Copy a flat device tensor to the host with the given shape.
    pub fn from_flat<B: Backend>(t: Tensor<B, 1>, shape: Vec<usize>) -> Self {
        let data = t
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("f32 data");
        Self { shape, data }
    }

    /// A flat device tensor with these values.
    pub fn to_flat<B: Backend>(&self, device: &B::Device) -> Tensor<B, 1> {
        Tensor::from_data(
            TensorData::new(self.data.clone(), [self.data.len()]),
            device,
        )
    }
}

/// Named host tensors, sorted by name.
pub type NamedTensors = BTreeMap<String, HostTensor>;

struct PathVisitor<'a, F> {
    path: Vec<String>,
    f: &'a mut F,
}

fn join(path: &[String]) -> String {
    path.join(".")
}

impl<B: Backend, F: FnMut(&str, ParamId, Vec<usize>, Tensor<B, 1>)> ModuleVisitor<B>
    for PathVisitor<'_, F>
{
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        let shape = t.dims().to_vec();
        let n: usize = shape.iter().product();
        (self.f)(&join(&self.path), param.id, shape, t.reshape([n]));
    }
}

impl<B: Backend, F: FnMut(&str, ParamId, Tensor<B, 1>) -> Tensor<B, 1>> ModuleMapper<B>
    for PathVisitor<'_, F>
{
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let name = join(&self.path);
        let id = param.id;
        param.map(|t| {
            let shape = t.dims();
            let require_grad = t.is_require_grad();
            let n: usize = shape.iter().product();
            let out = (self.f)(&name, id, t.reshape([n])).reshape(shape);
            if require_grad {
                out.require_grad()
            } else {
                out
            }
        })
    }
}

/// Call `f(name, id, shape, flat)` for every float parameter, in module order.
pub fn visit_named<B: Backend, M: Module<B>>(
    module: &M,
    mut f: impl FnMut(&str, ParamId, Vec<usize>, Tensor<B, 1>),
) {
    module.visit(&mut PathVisitor {
        path: Vec::new(),
        f: &mut f,
    });
}

/// Replace every float parameter by `f(name, id, flat)` (same length), keeping
/// ids and whether it requires grad.
pub fn map_named<B: Backend, M: Module<B>>(
    module: M,
    mut f: impl FnMut(&str, ParamId, Tensor<B, 1>) -> Tensor<B, 1>,
) -> M {
    module.map(&mut PathVisitor {
        path: Vec::new(),
        f: &mut f,
    })
}

struct CastMapper(burn::tensor::DType);

impl<B: Backend> ModuleMapper<B> for CastMapper {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let dtype = self.0;
        param.map(|t| crate::cast::like(t, dtype))
    }
}

/// Every float parameter cast to `dtype`, as an op of the autodiff graph:
/// gradients of a loss computed with the cast module reach the original
/// parameters, in their own type (mixed precision with f32 master weights).
pub fn cast_params<B: Backend, M: Module<B>>(module: M, dtype: burn::tensor::DType) -> M {
    module.map(&mut CastMapper(dtype))
}

/// Copy every float parameter to the host.
pub fn to_host<B: Backend, M: Module<B>>(module: &M) -> NamedTensors {
    let mut out = NamedTensors::new();
    visit_named(module, |name, _, shape, flat| {
        out.insert(name.to_string(), HostTensor::from_flat(flat, shape));
    });
    out
}

/// Load host tensors into a module by name. Every parameter must be present with
/// its shape, and every tensor must be used.
pub fn load_host<B: Backend, M: Module<B>>(
    module: M,
    tensors: &NamedTensors,
    device: &B::Device,
) -> Result<M> {
    let mut errors = Vec::new();
    let mut used = 0usize;
    let mut expected = BTreeMap::new();
    visit_named(&module, |name, _, shape, _| {
        expected.insert(name.to_string(), shape);
    });
    for (name, shape) in &expected {
        match tensors.get(name) {
            None => errors.push(format!("missing tensor {name}")),
            Some(t) if &t.shape != shape => errors.push(format!(
                "tensor {name} has shape {:?}, the model expects {:?}",
                t.shape, shape
            )),
            Some(_) => used += 1,
        }
    }
    for name in tensors.keys().filter(|n| !expected.contains_key(*n)) {
        errors.push(format!("unexpected tensor {name}"));
    }
    if !errors.is_empty() {
        let shown: Vec<_> = errors.iter().take(8).cloned().collect();
        return Err(ModelError::Load(format!(
            "{} problem(s), the weights do not match this model config: {}",
            errors.len(),
            shown.join("; ")
        )));
    }
    debug_assert_eq!(used, expected.len());
    Ok(map_named(module, |name, _, _| {
        tensors[name].to_flat(device)
    }))
}

struct GradVisitor<'a, B: burn::tensor::backend::AutodiffBackend> {
    path: Vec<String>,
    grads: &'a mut burn::optim::GradientsParams,
    out: BTreeMap<String, Tensor<B::InnerBackend, 1>>,
}

impl<B: burn::tensor::backend::AutodiffBackend> ModuleVisitor<B> for GradVisitor<'_, B> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let n: usize = g.dims().iter().product();
            self.out.insert(join(&self.path), g.reshape([n]));
        }
    }
}

/// Take the gradient of every float parameter out of `grads`, flat, by name.
/// Parameters that got no gradient are absent.
pub fn named_grads<B, M>(
    module: &M,
    grads: &mut burn::optim::GradientsParams,
) -> BTreeMap<String, Tensor<B::InnerBackend, 1>>
where
    B: burn::tensor::backend::AutodiffBackend,
    M: burn::module::AutodiffModule<B>,
{
    let mut v = GradVisitor::<B> {
        path: Vec::new(),
        grads,
        out: BTreeMap::new(),
    };
    module.visit(&mut v);
    v.out
}

struct LayoutVisitor {
    path: Vec<String>,
    out: Vec<(String, Vec<usize>)>,
}

impl<B: Backend> ModuleVisitor<B> for LayoutVisitor {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.out
            .push((join(&self.path), param.lazy_shape().to_vec()));
    }
}

/// Name and shape of every float parameter in module order, without
/// initialising lazy parameters (so it is free on a skeleton module).
pub fn layout<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>)> {
    let mut v = LayoutVisitor {
        path: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut v);
    v.out
}

struct FlatLoader<B: Backend> {
    flat: Tensor<B, 1>,
    at: usize,
    require_grad: bool,
}

impl<B: Backend> ModuleMapper<B> for FlatLoader<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let shape = param.lazy_shape();
        let n = shape.num_elements();
        let t: Tensor<B, D> = self.flat.clone().narrow(0, self.at, n).reshape(shape);
        self.at += n;
        let t = if self.require_grad {
            t.require_grad()
        } else {
            t
        };
        // The old value is dropped unread: a lazy parameter is never initialised.
        Param::initialized(param.id, t)
    }
}

/// Fill every float parameter, in module order, with the next slice of
/// `flat` (the concatenation of the flattened parameters, at least as long
/// as their total; padding after them is ignored). Lazy parameters are never
/// initialised, so loading into a skeleton costs only the new values.
///
/// # Shapes
/// flat: [>= number of parameters]
pub fn load_flat<B: Backend, M: Module<B>>(module: M, flat: Tensor<B, 1>, require_grad: bool) -> M {
    let mut loader = FlatLoader {
        flat,
        at: 0,
        require_grad,
    };
    module.map(&mut loader)
}
