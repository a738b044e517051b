// Shared argument checks for the C++ entry points. The Python layer validates user input
// with friendlier messages first; these guard direct calls through torch.ops.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#define VOS_CHECK_FLOATING(op, name, t)                                                        \
  TORCH_CHECK((t).is_floating_point(), op ": ", name, " must be a floating-point tensor, got ", \
              (t).scalar_type())

#define VOS_CHECK_DIM_AT_LEAST(op, name, t, n)                                                    \
  TORCH_CHECK((t).dim() >= (n), op ": ", name, " must have at least ", n, " dimensions, got shape ", \
              (t).sizes())

#define VOS_CHECK_SAME_DEVICE(op, name_a, a, name_b, b)                                          \
  TORCH_CHECK((a).device() == (b).device(), op ": ", name_a, " and ", name_b,                      \
              " must be on the same device, got ", (a).device(), " and ", (b).device())

#define VOS_CHECK_SAME_DTYPE(op, name_a, a, name_b, b)                                          \
  TORCH_CHECK((a).scalar_type() == (b).scalar_type(), op ": ", name_a, " and ", name_b,         \
              " must have the same dtype, got ", (a).scalar_type(), " and ", (b).scalar_type())

#define VOS_CHECK_SAME_SHAPE(op, name_a, a, name_b, b)                                          \
  TORCH_CHECK((a).sizes() == (b).sizes(), op ": ", name_a, " and ", name_b,                      \
              " must have the same shape, got ", (a).sizes(), " and ", (b).sizes())
