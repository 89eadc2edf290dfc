// layer_ops.h -- the op bodies shared by every backend's registration: check the arguments, make them
// contiguous rows, run the layer with the given backend, return the schema's results (layer_op_args.h).
#pragma once

#include "layer_op_args.h"
#include "step_kernels.h"

namespace lstm_ext {

LayerForwardResults run_layer_forward(const char* op, const StepKernels& steps, const LayerForwardArgs& args);
LayerBackwardResults run_layer_backward(const char* op, const StepKernels& steps, const LayerBackwardArgs& args);

}  // namespace lstm_ext
