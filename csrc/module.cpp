// module.cpp -- the Python module lstm_ext._C. Importing it runs the TORCH_LIBRARY registrations of
// the other translation units; the module itself says which backends were compiled in and which CPU
// build runs, and holds the CPU buffer cache's two functions (plain functions: they take no tensors).
#include <Python.h>

#include "cpu/buffer_cache.h"
#include "step_kernels.h"

namespace {

PyObject* cpu_cache_bytes(PyObject*, PyObject*) {
  return PyLong_FromSize_t(lstm_ext::cpu::cached_huge_page_bytes());
}

PyObject* empty_cpu_cache(PyObject*, PyObject*) {
  Py_BEGIN_ALLOW_THREADS  // unmapping a GiB takes a while: other Python threads may run meanwhile
  lstm_ext::cpu::empty_huge_page_cache();
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"cpu_cache_bytes", cpu_cache_bytes, METH_NOARGS, "Bytes of freed CPU buffers kept for reuse."},
    {"empty_cpu_cache", empty_cpu_cache, METH_NOARGS, "Returns the kept CPU buffers to the system."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",
      "lstm_ext's compiled operators; use them through torch.ops.lstm_ext",
      -1,
      methods,
  };
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) {
    return nullptr;
  }
#ifdef LSTM_EXT_WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  if (PyModule_AddIntConstant(module, "WITH_CUDA", with_cuda) != 0 ||
      PyModule_AddStringConstant(module, "CPU_KERNELS", lstm_ext::cpu_step_kernels_name()) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}
