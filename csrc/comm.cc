// comm.cc: the C ABI of copies within a device (pv_tensor_copy) and of
// the collectives (pv_comm_*). Here the arguments are checked and matched
// to the communicator's device; the work is the backend's: memcpy on the
// CPU, NCCL on the GPU (cuda/comm_nccl.cu). The CPU backend has no
// collectives: CPU ranks meet over the trainer's TCP group instead.
#include <cmath>
#include <cstring>

#include "core_internal.h"

// One rank's communicator: the backend's handle and the device it runs
// on, kept open (one reference) until pv_comm_destroy.
struct pv_comm {
  pv_device *dev;
  void *impl;
  int rank, size;
};

namespace {

// Checks that [offset, offset + count) lies inside t's numel elements,
// without overflow (count >= 0). what and offset_name name the tensor and
// its offset's argument.
pv_status check_range(const pv_tensor *t, int64_t offset, int64_t count, const char *what,
                      const char *offset_name) {
  if (offset < 0)
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "tensor copy: %s is %lld, must be >= 0",
                    offset_name, (long long)offset);
  if (offset > t->numel || count > t->numel - offset)
    return pv::fail(PV_ERR_INVALID_ARGUMENT,
                    "tensor copy: %lld elements from %s %lld run past the end of %s (%lld "
                    "elements)", (long long)count, offset_name, (long long)offset, what,
                    (long long)t->numel);
  return PV_OK;
}

// The core's answer when a device's backend has no collectives.
pv_status no_collectives(const pv_device *dev) {
  if (dev->kind == PV_DEVICE_CPU)
    return pv::fail(PV_ERR_UNSUPPORTED,
                    "device %s has no NCCL collectives (CPU ranks meet over polyview's TCP "
                    "group)", dev->name);
  return pv::fail(PV_ERR_UNSUPPORTED,
                  "device %s has no NCCL collectives: the CUDA backend was built without "
                  "NCCL (install it, e.g. pip nvidia-nccl-cu13, and rebuild with CMake)",
                  dev->name);
}

// Checks the communicator of a collective named op and that its backend
// implements op (fn not NULL).
pv_status check_comm(const pv_comm *c, const void *fn, const char *op) {
  if (!c) return pv::fail(PV_ERR_INVALID_ARGUMENT, "%s: communicator is NULL", op);
  if (!fn) return no_collectives(c->dev);
  return PV_OK;
}

// The common checks of an in-place collective on t: a tensor on the
// communicator's device.
pv_status check_in_place(const pv_comm *c, const pv_tensor *t, const char *op) {
  if (!t) return pv::fail(PV_ERR_INVALID_ARGUMENT, "%s: t is NULL", op);
  if (t->dev != c->dev)
    return pv::fail(PV_ERR_INVALID_ARGUMENT,
                    "%s: t lives on device %s, the communicator on %s", op, t->dev->name,
                    c->dev->name);
  return PV_OK;
}

}  // namespace

extern "C" {

// ---- copies within a device ------------------------------------------------

pv_status pv_tensor_copy(pv_tensor *dst, int64_t dst_offset, const pv_tensor *src,
                         int64_t src_offset, int64_t count) {
  if (!dst) return pv::fail(PV_ERR_INVALID_ARGUMENT, "tensor copy: dst is NULL");
  if (!src) return pv::fail(PV_ERR_INVALID_ARGUMENT, "tensor copy: src is NULL");
  if (src->dev != dst->dev)
    return pv::fail(PV_ERR_INVALID_ARGUMENT,
                    "tensor copy: src lives on device %s, dst on %s (copies cross no devices)",
                    src->dev->name, dst->dev->name);
  if (src->dtype != dst->dtype)
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "tensor copy: src is %s, dst %s",
                    pv::dtype_name(src->dtype), pv::dtype_name(dst->dtype));
  if (count < 0)
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "tensor copy: count is %lld, must be >= 0",
                    (long long)count);
  pv_status st = check_range(dst, dst_offset, count, "dst", "dst_offset");
  if (st != PV_OK) return st;
  if ((st = check_range(src, src_offset, count, "src", "src_offset")) != PV_OK) return st;
  // One tensor: the two ranges may not share an element (memcpy and
  // cudaMemcpyAsync leave an overlapping copy undefined).
  if (src == dst && count > 0 && src_offset < dst_offset + count &&
      dst_offset < src_offset + count)
    return pv::fail(PV_ERR_INVALID_ARGUMENT,
                    "tensor copy: src [%lld, %lld) and dst [%lld, %lld) overlap in one tensor",
                    (long long)src_offset, (long long)(src_offset + count),
                    (long long)dst_offset, (long long)(dst_offset + count));
  if (count == 0) return PV_OK;

  pv_device *dev = dst->dev;
  if (!dev->backend->copy_d2d)
    return pv::fail(PV_ERR_UNSUPPORTED, "tensor copy: device %s cannot copy within itself",
                    dev->name);
  const int64_t size = pv::dtype_size(dst->dtype);
  return dev->backend->copy_d2d(dev->ctx, static_cast<char *>(dst->data) + dst_offset * size,
                                static_cast<const char *>(src->data) + src_offset * size,
                                count * size);
}

// ---- communicators -----------------------------------------------------------

pv_status pv_comm_unique_id(pv_device *dev, uint8_t id[PV_COMM_ID_BYTES]) {
  if (!dev) return pv::fail(PV_ERR_INVALID_ARGUMENT, "comm unique id: dev is NULL");
  if (!id) return pv::fail(PV_ERR_INVALID_ARGUMENT, "comm unique id: id is NULL");
  std::memset(id, 0, PV_COMM_ID_BYTES);
  if (!dev->backend->comm_unique_id) return no_collectives(dev);
  return dev->backend->comm_unique_id(dev->ctx, id);
}

pv_status pv_comm_init(pv_device *dev, const uint8_t id[PV_COMM_ID_BYTES], int rank, int size,
                       double timeout_seconds, pv_comm **out) {
  if (!out) return pv::fail(PV_ERR_INVALID_ARGUMENT, "comm init: out is NULL");
  *out = nullptr;
  if (!dev) return pv::fail(PV_ERR_INVALID_ARGUMENT, "comm init: dev is NULL");
  if (!id) return pv::fail(PV_ERR_INVALID_ARGUMENT, "comm init: id is NULL");
  if (size < 1)
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "comm init: size is %d, must be >= 1", size);
  if (rank < 0 || rank >= size)
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "comm init: rank %d outside [0, %d)", rank, size);
  if (!std::isfinite(timeout_seconds) || timeout_seconds <= 0)
    return pv::fail(PV_ERR_INVALID_ARGUMENT,
                    "comm init: timeout_seconds is %g, must be finite and > 0",
                    timeout_seconds);
  if (!dev->backend->comm_init) return no_collectives(dev);

  pv_comm_init_args args;
  std::memcpy(args.id, id, PV_COMM_ID_BYTES);
  args.rank = rank;
  args.size = size;
  args.timeout_seconds = timeout_seconds;
  PV_GUARD({
    pv_comm *c = new pv_comm();
    c->dev = dev;
    c->rank = rank;
    c->size = size;
    pv_status st = dev->backend->comm_init(dev->ctx, &args, &c->impl);
    if (st != PV_OK) {
      delete c;
      return st;
    }
    dev->refs.fetch_add(1);
    *out = c;
    return PV_OK;
  })
}

pv_status pv_comm_all_reduce_sum(pv_comm *c, pv_tensor *t) {
  const char *op = "all-reduce";
  pv_status st = check_comm(c, c ? (const void *)c->dev->backend->comm_all_reduce : nullptr, op);
  if (st != PV_OK) return st;
  if ((st = check_in_place(c, t, op)) != PV_OK) return st;
  if (t->dtype != PV_F32 && t->dtype != PV_BF16)
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "%s: t is %s, must be float32 or bfloat16", op,
                    pv::dtype_name(t->dtype));
  pv_comm_args args = {t->numel, t->dtype, t->data, t->data, 0};
  return c->dev->backend->comm_all_reduce(c->impl, &args);
}

pv_status pv_comm_all_gather(pv_comm *c, const pv_tensor *local, pv_tensor *out) {
  const char *op = "all-gather";
  pv_status st = check_comm(c, c ? (const void *)c->dev->backend->comm_all_gather : nullptr, op);
  if (st != PV_OK) return st;
  if (!local) return pv::fail(PV_ERR_INVALID_ARGUMENT, "%s: local is NULL", op);
  if (!out) return pv::fail(PV_ERR_INVALID_ARGUMENT, "%s: out is NULL", op);
  if (local->dev != c->dev || out->dev != c->dev)
    return pv::fail(PV_ERR_INVALID_ARGUMENT,
                    "%s: local lives on device %s and out on %s, the communicator on %s", op,
                    local->dev->name, out->dev->name, c->dev->name);
  if (local->dtype != out->dtype)
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "%s: local is %s, out %s", op,
                    pv::dtype_name(local->dtype), pv::dtype_name(out->dtype));
  // numel is at most INT64_MAX / 16 (pv_tensor_create), and size < 2^31.
  if (out->numel / c->size != local->numel || out->numel % c->size != 0)
    return pv::fail(PV_ERR_INVALID_ARGUMENT,
                    "%s: out has %lld elements, must be size %d x local's %lld", op,
                    (long long)out->numel, c->size, (long long)local->numel);
  pv_comm_args args = {local->numel, local->dtype, local->data, out->data, 0};
  return c->dev->backend->comm_all_gather(c->impl, &args);
}

pv_status pv_comm_broadcast(pv_comm *c, pv_tensor *t, int root) {
  const char *op = "broadcast";
  pv_status st = check_comm(c, c ? (const void *)c->dev->backend->comm_broadcast : nullptr, op);
  if (st != PV_OK) return st;
  if ((st = check_in_place(c, t, op)) != PV_OK) return st;
  if (root < 0 || root >= c->size)
    return pv::fail(PV_ERR_INVALID_ARGUMENT, "%s: root %d outside [0, %d)", op, root, c->size);
  pv_comm_args args = {t->numel, t->dtype, t->data, t->data, root};
  return c->dev->backend->comm_broadcast(c->impl, &args);
}

pv_status pv_comm_abort(pv_comm *c) {
  pv_status st = check_comm(c, c ? (const void *)c->dev->backend->comm_abort : nullptr,
                            "comm abort");
  if (st != PV_OK) return st;
  return c->dev->backend->comm_abort(c->impl);
}

void pv_comm_destroy(pv_comm *c) {
  if (!c) return;
  if (c->dev->backend->comm_destroy) c->dev->backend->comm_destroy(c->impl);
  pv::device_unref(c->dev);
  delete c;
}

int pv_comm_rank(const pv_comm *c) { return c ? c->rank : -1; }
int pv_comm_size(const pv_comm *c) { return c ? c->size : 0; }

}  // extern "C"
