// layer_op_args.h -- the layer ops' arguments and results, described once. Each list below is an X-macro
// X(kind, name, schema_default); from it come the schema (layer_op_schema), the C++ structs the kernels
// take, and the boxed kernels' unpacking from the dispatcher's stack. Python reads the registered schema
// for its own description (lstm_ext/_ops.py), so nothing else spells the arguments out.
//
// input is [T, B, I], or packed rows [N, I] with batch_sizes (a PackedSequence's, on the CPU). With
// weight_hr (nn.LSTM's proj_size P) the output and h are projected to P, and `unprojected` keeps the h
// before the projection for the backward. The cell's own arguments and what it keeps are lstm_cell.h's.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>
#include <ATen/core/stack.h>

#include <string>

#include "lstm_cell.h"

// The layer: sequence, weights, initial state and direction, then the cell's arguments.
#define LSTM_EXT_LAYER_FORWARD_ARGS(X) \
  X(Tensor, input, "")                 \
  X(OptionalTensor, batch_sizes, "")   \
  X(Tensor, weight_ih, "")             \
  X(Tensor, weight_hh, "")             \
  X(OptionalTensor, bias_ih, "")       \
  X(OptionalTensor, bias_hh, "")       \
  X(OptionalTensor, weight_hr, "")     \
  X(Tensor, h0, "")                    \
  X(Tensor, c0, "")                    \
  X(Bool, reverse, "")                 \
  X(Bool, training, "")                \
  LSTM_EXT_CELL_ARGS(X)

// output [T, B, P], h_n [B, P], c_n [B, H] (each sequence's last state), then what training keeps for the
// backward (empty [0] when not training, or where nothing is kept): cells are c_t of every step, also a
// differentiable result (return_cell_states).
#define LSTM_EXT_LAYER_FORWARD_RETURNS(X) \
  X(Tensor, output, "")                   \
  X(Tensor, h_n, "")                      \
  X(Tensor, c_n, "")                      \
  LSTM_EXT_CELL_SAVED(X)                  \
  X(Tensor, unprojected, "")

// The gradients of the forward's differentiable results: grad_cells may be None (no cell states used).
// The backward takes these, the forward's arguments again, what it returned, and need_grad_input: a first
// layer's input rarely needs a gradient, and without it the backward skips one of its large GEMMs and
// returns an empty [0] (layer_backward_schema).
#define LSTM_EXT_LAYER_OUTPUT_GRADS(X) \
  X(Tensor, grad_output, "")           \
  X(Tensor, grad_h_n, "")              \
  X(Tensor, grad_c_n, "")              \
  X(OptionalTensor, grad_cells, "")

// One gradient per differentiable tensor argument of the forward (grad_bias for bias_ih and bias_hh alike),
// an empty [0] for an argument that is absent.
#define LSTM_EXT_LAYER_BACKWARD_RETURNS(X) \
  X(Tensor, grad_input, "")                \
  X(Tensor, grad_weight_ih, "")            \
  X(Tensor, grad_weight_hh, "")            \
  X(Tensor, grad_bias, "")                 \
  X(Tensor, grad_weight_hr, "")            \
  X(Tensor, grad_h0, "")                   \
  X(Tensor, grad_c0, "")                   \
  LSTM_EXT_CELL_GRADS(X)

namespace lstm_ext {
namespace op_args {

// The C++ type and the schema type of each kind of argument. An absent optional tensor is undefined.
using Tensor = at::Tensor;
using OptionalTensor = at::Tensor;
using Bool = bool;
using Float = double;

inline void unpack(const c10::IValue& v, at::Tensor& out) { out = v.isNone() ? at::Tensor() : v.toTensor(); }
inline void unpack(const c10::IValue& v, bool& out) { out = v.toBool(); }
inline void unpack(const c10::IValue& v, double& out) { out = v.toDouble(); }

}  // namespace op_args

#define LSTM_EXT_STRUCT_FIELD(kind, name, dflt) op_args::kind name;
#define LSTM_EXT_UNPACK_FIELD(kind, name, dflt) op_args::unpack(args[index++], out.name);
#define LSTM_EXT_PUSH_FIELD(kind, name, dflt) stack.emplace_back(std::move(name));
#define LSTM_EXT_COUNT_FIELD(kind, name, dflt) +1
#define LSTM_EXT_SCHEMA_FIELD(kind, name, dflt)                                                    \
  schema += std::string(schema.empty() ? "" : ", ") + lstm_ext_schema_type_##kind + " " #name + \
            (with_defaults ? dflt : "");
#define lstm_ext_schema_type_Tensor "Tensor"
#define lstm_ext_schema_type_OptionalTensor "Tensor?"
#define lstm_ext_schema_type_Bool "bool"
#define lstm_ext_schema_type_Float "float"

// A struct of the fields of a list: read from `count` stack entries, pushed onto a stack, and its schema
// text (arguments, or with `with_defaults` the defaults too).
#define LSTM_EXT_DEFINE_FIELD_STRUCT(Struct, LIST)                        \
  struct Struct {                                                         \
    LIST(LSTM_EXT_STRUCT_FIELD)                                           \
    static constexpr size_t count = 0 LIST(LSTM_EXT_COUNT_FIELD);         \
    static Struct from(const c10::IValue* args) {                         \
      Struct out;                                                         \
      size_t index = 0;                                                   \
      LIST(LSTM_EXT_UNPACK_FIELD)                                         \
      return out;                                                         \
    }                                                                     \
    void push_to(torch::jit::Stack& stack) && { LIST(LSTM_EXT_PUSH_FIELD) } \
    static std::string schema(bool with_defaults) {                       \
      std::string schema;                                                 \
      LIST(LSTM_EXT_SCHEMA_FIELD)                                         \
      return schema;                                                      \
    }                                                                     \
  };

LSTM_EXT_DEFINE_FIELD_STRUCT(LayerForwardArgs, LSTM_EXT_LAYER_FORWARD_ARGS)
LSTM_EXT_DEFINE_FIELD_STRUCT(LayerForwardResults, LSTM_EXT_LAYER_FORWARD_RETURNS)
LSTM_EXT_DEFINE_FIELD_STRUCT(LayerOutputGrads, LSTM_EXT_LAYER_OUTPUT_GRADS)
LSTM_EXT_DEFINE_FIELD_STRUCT(LayerBackwardResults, LSTM_EXT_LAYER_BACKWARD_RETURNS)

// The backward's arguments, in the schema's order.
struct LayerBackwardArgs {
  LayerOutputGrads grads;
  LayerForwardArgs forward;
  LayerForwardResults saved;
  bool need_grad_input;
  static constexpr size_t count = LayerOutputGrads::count + LayerForwardArgs::count + LayerForwardResults::count + 1;
  static LayerBackwardArgs from(const c10::IValue* args) {
    LayerBackwardArgs out;
    out.grads = LayerOutputGrads::from(args);
    out.forward = LayerForwardArgs::from(args + LayerOutputGrads::count);
    out.saved = LayerForwardResults::from(args + LayerOutputGrads::count + LayerForwardArgs::count);
    out.need_grad_input = args[count - 1].toBool();
    return out;
  }
  static std::string schema() {
    return LayerOutputGrads::schema(false) + ", " + LayerForwardArgs::schema(false) + ", " +
           LayerForwardResults::schema(false) + ", bool need_grad_input";
  }
};

// "name(args) -> (results)"; `extra_args` are appended (the emulated ops' launch geometry).
inline std::string layer_forward_schema(const std::string& name, const std::string& extra_args = "") {
  return name + "(" + LayerForwardArgs::schema(true) + extra_args + ") -> (" + LayerForwardResults::schema(false) +
         ")";
}
inline std::string layer_backward_schema(const std::string& name, const std::string& extra_args = "") {
  return name + "(" + LayerBackwardArgs::schema() + extra_args + ") -> (" + LayerBackwardResults::schema(false) +
         ")";
}

}  // namespace lstm_ext
