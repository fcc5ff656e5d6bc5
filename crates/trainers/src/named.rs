//! Parameters by module path (`layers.0.attention.q_proj.weight`), for checkpoints.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// One float parameter: its path, id and values.
pub(crate) struct Named {
    pub path: String,
    pub id: ParamId,
    pub data: TensorData,
}

/// The float parameters of `module` whose path and gradient requirement `keep` accepts, in
/// visiting order.
pub(crate) fn collect<B: Backend, M: Module<B>>(
    module: &M,
    keep: &dyn Fn(&str, bool) -> bool,
) -> Vec<Named> {
    struct Collect<'a> {
        path: Vec<String>,
        keep: &'a dyn Fn(&str, bool) -> bool,
        found: Vec<Named>,
    }
    impl<B: Backend> ModuleVisitor<B> for Collect<'_> {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let tensor = param.val();
            let path = self.path.join(".");
            if (self.keep)(&path, tensor.is_require_grad()) {
                self.found.push(Named {
                    path,
                    id: param.id,
                    data: tensor.into_data().convert::<f32>(),
                });
            }
        }
    }
    let mut visitor = Collect {
        path: Vec::new(),
        keep,
        found: Vec::new(),
    };
    module.visit(&mut visitor);
    visitor.found
}

/// `module` with the parameter at each path of `values` replaced by its values (keeping the
/// parameter's gradient requirement) and, where an id is given, its id, laid out as the
/// parameter it replaces (a transposed-view weight loads as one, which the student's optimizer
/// and an EMA teacher's update both keep; so a resumed run computes exactly what the saved one
/// did). Every path must exist, with the shape it has in the module.
pub(crate) fn replace<B: Backend, M: Module<B>>(
    module: M,
    mut values: HashMap<String, (TensorData, Option<ParamId>)>,
) -> std::result::Result<M, String> {
    struct Replace {
        path: Vec<String>,
        values: HashMap<String, (TensorData, Option<ParamId>)>,
        problem: Option<String>,
    }
    impl<B: Backend> ModuleMapper<B> for Replace {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let path = self.path.join(".");
            let Some((data, id)) = self.values.remove(&path) else {
                return param;
            };
            let (old_id, tensor, mapper) = param.consume();
            if data.shape.as_slice() != tensor.dims().as_slice() {
                self.problem.get_or_insert(format!(
                    "`{path}` has shape {:?} in the checkpoint, {:?} in the model",
                    data.shape,
                    tensor.dims()
                ));
                return Param::from_mapped_value(old_id, tensor, mapper);
            }
            let require_grad = tensor.is_require_grad();
            let loaded = opd_policy::params::from_data_like(&tensor, data);
            let loaded = if require_grad {
                loaded.require_grad()
            } else {
                loaded
            };
            Param::from_mapped_value(id.unwrap_or(old_id), loaded, mapper)
        }
    }
    let mut mapper = Replace {
        path: Vec::new(),
        values: std::mem::take(&mut values),
        problem: None,
    };
    let module = module.map(&mut mapper);
    if let Some(problem) = mapper.problem {
        return Err(problem);
    }
    if let Some(path) = mapper.values.keys().min() {
        return Err(format!("`{path}` is not a parameter of the model"));
    }
    Ok(module)
}
