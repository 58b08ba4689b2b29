/*
 * _uring.c -- io_uring as a small CPython extension: the completion port of ioladder.
 *
 * Raw io_uring_setup/enter/register syscalls and the kernel's uapi header; no liburing.
 * What this file guarantees, and why:
 *
 * Rule 1 -- buffers outlive the kernel's use of them.  Every op owns a *slot*.  The slot holds a
 *   strong reference to the op's ctx and a Py_buffer export of every buffer the kernel may read
 *   or write (PyBUF_WRITABLE for receives), plus any kernel-visible side data (sockaddr, timespec,
 *   msghdr/iovec).  All of it is released only when the op's FINAL completion is reaped (a CQE
 *   without IORING_CQE_F_MORE).  A bytearray with an export cannot be resized, so nothing the
 *   kernel points at is ever freed or moved.  Slots live in fixed 256-entry chunks that never
 *   move, and side data in heap blocks a slot keeps until that final completion, so sqe->addr
 *   may point into either.
 *
 * Rule 2 -- user_data is (generation << 32 | slot index).  It is also the op id handed to Python.
 *   A slot's generation is bumped when it is released, so a stale op id can never match (and so
 *   never cancel) a newer op that reuses the slot: the kernel compares the full 64 bits.
 *
 * Rule 3 -- the GIL is the ring lock, and no Python code runs inside a critical section.
 *   SQ tail, CQ head, slot table and free list are touched only while holding the GIL, in
 *   stretches that call no Python code (no allocation that could trigger the cyclic GC, no
 *   DECREF, no buffer acquisition).  Reaping is therefore two-phase: phase 1 (pure C) copies
 *   CQEs out, advances the CQ head and marks final slots RELEASING; phase 2 builds the
 *   (ctx, res, flags) tuples and releases buffers, and may run arbitrary finalizers -- even ones
 *   that re-enter this ring -- safely.  The only place the GIL is released is the blocking
 *   io_uring_enter in wait()/close(), during which the thread touches no userspace ring state;
 *   io_uring itself serialises concurrent enters.  So several threads may block in wait() on one
 *   ring while another prepares and submits (rings created with single_issuer=False).  The
 *   module does not declare free-threading support, so a free-threaded interpreter re-enables
 *   the GIL when it imports it.  The kernel owns each request by the task that submitted it and
 *   may cancel it when that thread exits; the wake poll re-arms itself if that happens.
 *
 * Rule 4 -- teardown waits for every thread that might still hold a pointer into the ring.
 *   Methods that release the GIL or run Python code while holding ring pointers count themselves
 *   in `busy`; close() cancels everything, waits (bounded) for the final completions, and the
 *   unmapping happens only once busy drops to zero.  Ops that still have not completed when the
 *   bound expires keep their buffers pinned forever (a leak) rather than let the kernel write
 *   into freed memory.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include "../_mcache.h"
#include "../_sendgate.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <linux/io_uring.h>

/* ------------------------------------------------------------------------------------------ */
/* Constants newer than some installed headers.  Defined after the header is included, so a    */
/* macro here never collides with an enumerator of the same name that the header declares.      */

#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
#ifndef __NR_io_uring_enter
#define __NR_io_uring_enter 426
#endif
#ifndef __NR_io_uring_register
#define __NR_io_uring_register 427
#endif

#ifndef IORING_SETUP_CQSIZE
#define IORING_SETUP_CQSIZE (1U << 3)
#endif
#ifndef IORING_SETUP_CLAMP
#define IORING_SETUP_CLAMP (1U << 4)
#endif
#ifndef IORING_SETUP_SUBMIT_ALL
#define IORING_SETUP_SUBMIT_ALL (1U << 7)
#endif
#ifndef IORING_SETUP_COOP_TASKRUN
#define IORING_SETUP_COOP_TASKRUN (1U << 8)
#endif
#ifndef IORING_SETUP_TASKRUN_FLAG
#define IORING_SETUP_TASKRUN_FLAG (1U << 9)
#endif
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif

#ifndef IORING_SQ_NEED_WAKEUP
#define IORING_SQ_NEED_WAKEUP (1U << 0)
#endif
#ifndef IORING_SQ_CQ_OVERFLOW
#define IORING_SQ_CQ_OVERFLOW (1U << 1)
#endif
#ifndef IORING_SQ_TASKRUN
#define IORING_SQ_TASKRUN (1U << 2)
#endif

#ifndef IORING_FEAT_SINGLE_MMAP
#define IORING_FEAT_SINGLE_MMAP (1U << 0)
#endif
#ifndef IORING_FEAT_NODROP
#define IORING_FEAT_NODROP (1U << 1)
#endif
#ifndef IORING_FEAT_EXT_ARG
#define IORING_FEAT_EXT_ARG (1U << 8)
#endif

#ifndef IORING_ENTER_GETEVENTS
#define IORING_ENTER_GETEVENTS (1U << 0)
#endif
#ifndef IORING_ENTER_EXT_ARG
#define IORING_ENTER_EXT_ARG (1U << 3)
#endif
#ifndef IORING_ENTER_REGISTERED_RING
#define IORING_ENTER_REGISTERED_RING (1U << 4)
#endif

#ifndef IOSQE_IO_LINK
#define IOSQE_IO_LINK (1U << 2)
#endif
#ifndef IOSQE_IO_HARDLINK
#define IOSQE_IO_HARDLINK (1U << 3)
#endif
#ifndef IOSQE_BUFFER_SELECT
#define IOSQE_BUFFER_SELECT (1U << 5)
#endif

#ifndef IORING_CQE_F_BUFFER
#define IORING_CQE_F_BUFFER (1U << 0)
#endif
#ifndef IORING_CQE_F_MORE
#define IORING_CQE_F_MORE (1U << 1)
#endif
#ifndef IORING_CQE_F_SOCK_NONEMPTY
#define IORING_CQE_F_SOCK_NONEMPTY (1U << 2)
#endif
#ifndef IORING_CQE_F_NOTIF
#define IORING_CQE_F_NOTIF (1U << 3)
#endif
#ifndef IORING_CQE_F_BUF_MORE
#define IORING_CQE_F_BUF_MORE (1U << 4) /* 6.12: an incremental buffer keeps being filled */
#endif
#ifndef IOU_PBUF_RING_INC
#define IOU_PBUF_RING_INC 2 /* io_uring_buf_reg.flags, 6.12: buffers consumed incrementally */
#endif
#ifndef IORING_CQE_BUFFER_SHIFT
#define IORING_CQE_BUFFER_SHIFT 16
#endif

#ifndef IORING_POLL_ADD_MULTI
#define IORING_POLL_ADD_MULTI (1U << 0)
#endif
#ifndef IORING_ACCEPT_MULTISHOT
#define IORING_ACCEPT_MULTISHOT (1U << 0)
#endif
#ifndef IORING_RECV_MULTISHOT
#define IORING_RECV_MULTISHOT (1U << 1)
#endif
#ifndef IORING_ASYNC_CANCEL_ALL
#define IORING_ASYNC_CANCEL_ALL (1U << 0)
#endif
#ifndef IORING_ASYNC_CANCEL_FD
#define IORING_ASYNC_CANCEL_FD (1U << 1)
#endif
#ifndef IORING_ASYNC_CANCEL_ANY
#define IORING_ASYNC_CANCEL_ANY (1U << 2)
#endif

#ifndef IORING_REGISTER_PROBE
#define IORING_REGISTER_PROBE 8
#endif
#ifndef IORING_REGISTER_PBUF_RING
#define IORING_REGISTER_PBUF_RING 22
#endif
#ifndef IORING_UNREGISTER_PBUF_RING
#define IORING_UNREGISTER_PBUF_RING 23
#endif
#ifndef IORING_REGISTER_RING_FDS
#define IORING_REGISTER_RING_FDS 20
#endif
#ifndef IORING_UNREGISTER_RING_FDS
#define IORING_UNREGISTER_RING_FDS 21
#endif
#ifndef IO_URING_OP_SUPPORTED
#define IO_URING_OP_SUPPORTED (1U << 0)
#endif

#ifndef IORING_OFF_SQ_RING
#define IORING_OFF_SQ_RING 0ULL
#endif
#ifndef IORING_OFF_CQ_RING
#define IORING_OFF_CQ_RING 0x8000000ULL
#endif
#ifndef IORING_OFF_SQES
#define IORING_OFF_SQES 0x10000000ULL
#endif

/* Opcodes are an enum in the header (so they cannot be #ifndef-guarded); the numbering is ABI. */
enum {
    UL_OP_NOP = 0,
    UL_OP_POLL_ADD = 6,
    UL_OP_SENDMSG = 9,
    UL_OP_TIMEOUT = 11,
    UL_OP_ACCEPT = 13,
    UL_OP_ASYNC_CANCEL = 14,
    UL_OP_LINK_TIMEOUT = 15,
    UL_OP_CONNECT = 16,
    UL_OP_CLOSE = 19,
    UL_OP_READ = 22,
    UL_OP_WRITE = 23,
    UL_OP_SEND = 26,
    UL_OP_RECV = 27,
    UL_OP_SPLICE = 30,
    UL_OP_SHUTDOWN = 34,
    UL_OP_SOCKET = 45,  /* Linux 5.19: also multishot accept, buffer rings, CANCEL_ANY/FD */
    UL_OP_SEND_ZC = 47, /* Linux 6.0: also multishot recv */
};

/* Names of every opcode up to the newest kernel this file knows, for probe/supports(). */
static const char *const ul_op_names[] = {
    "nop", "readv", "writev", "fsync", "read_fixed", "write_fixed", "poll_add", "poll_remove",
    "sync_file_range", "sendmsg", "recvmsg", "timeout", "timeout_remove", "accept",
    "async_cancel", "link_timeout", "connect", "fallocate", "openat", "close", "files_update",
    "statx", "read", "write", "fadvise", "madvise", "send", "recv", "openat2", "epoll_ctl",
    "splice", "provide_buffers", "remove_buffers", "tee", "shutdown", "renameat", "unlinkat",
    "mkdirat", "symlinkat", "linkat", "msg_ring", "fsetxattr", "setxattr", "fgetxattr",
    "getxattr", "socket", "uring_cmd", "send_zc", "sendmsg_zc", "read_multishot", "waitid",
    "futex_wait", "futex_wake", "futex_waitv", "fixed_fd_install", "ftruncate", "bind", "listen",
    "recv_zc", "epoll_wait", "readv_fixed", "writev_fixed", "pipe",
};
#define UL_NOPS ((int)(sizeof(ul_op_names) / sizeof(ul_op_names[0])))

static const char *const ul_feat_names[] = {
    "single_mmap", "nodrop", "submit_stable", "rw_cur_pos", "cur_personality", "fast_poll",
    "poll_32bits", "sqpoll_nonfixed", "ext_arg", "native_workers", "rsrc_tags", "cqe_skip",
    "linked_file", "reg_reg_ring", "recvsend_bundle", "min_timeout", "rw_attr", "no_iowait",
};
#define UL_NFEATS ((int)(sizeof(ul_feat_names) / sizeof(ul_feat_names[0])))

/* Our own mirrors of the uapi structs that older headers lack or have changed field names in.
 * The layouts are ABI; the static asserts pin the ones the installed header also has. */
struct ul_sqe {
    uint8_t opcode;
    uint8_t flags;
    uint16_t ioprio;
    int32_t fd;
    uint64_t off;      /* or addr2 */
    uint64_t addr;     /* or splice_off_in */
    uint32_t len;
    uint32_t op_flags; /* rw/msg/poll32/accept/cancel/timeout/splice flags: one union */
    uint64_t user_data;
    uint16_t buf_group; /* or buf_index */
    uint16_t personality;
    int32_t splice_fd_in; /* or file_index */
    uint64_t addr3;
    uint64_t pad2;
};
_Static_assert(sizeof(struct ul_sqe) == 64, "SQE is 64 bytes");
_Static_assert(sizeof(struct ul_sqe) == sizeof(struct io_uring_sqe), "SQE mirror matches header");
_Static_assert(offsetof(struct ul_sqe, user_data) == offsetof(struct io_uring_sqe, user_data),
               "user_data offset");
_Static_assert(offsetof(struct ul_sqe, len) == offsetof(struct io_uring_sqe, len), "len offset");
_Static_assert(sizeof(struct io_uring_cqe) == 16, "CQE is 16 bytes");

struct ul_ts {
    int64_t tv_sec;
    long long tv_nsec;
};

struct ul_getevents_arg {
    uint64_t sigmask;
    uint32_t sigmask_sz;
    uint32_t min_wait_usec; /* "pad" before 6.12 */
    uint64_t ts;
};

struct ul_probe_op {
    uint8_t op;
    uint8_t resv;
    uint16_t flags;
    uint32_t resv2;
};

struct ul_probe {
    uint8_t last_op;
    uint8_t ops_len;
    uint16_t resv;
    uint32_t resv2[3];
    struct ul_probe_op ops[256];
};

struct ul_buf {
    uint64_t addr;
    uint32_t len;
    uint16_t bid;
    uint16_t resv; /* bufs[0].resv is the ring tail */
};
_Static_assert(sizeof(struct ul_buf) == 16, "io_uring_buf is 16 bytes");

struct ul_rsrc_update { /* io_uring_rsrc_update (IORING_REGISTER_RING_FDS) */
    uint32_t offset;
    uint32_t resv;
    uint64_t data;
};

struct ul_buf_reg {
    uint64_t ring_addr;
    uint32_t ring_entries;
    uint16_t bgid;
    uint16_t flags;
    uint64_t resv[3];
};

/* ------------------------------------------------------------------------------------------ */

#define UL_INTERNAL_IDX 0xFFFFFFFFu
#define UL_TAG_WAKE 1u
#define UL_TAG_CANCEL 2u
#define UL_TAG_NOP 3u
#define UL_UD(tag) (((uint64_t)(tag) << 32) | UL_INTERNAL_IDX)

#define UL_CHUNK_SHIFT 8
#define UL_CHUNK (1u << UL_CHUNK_SHIFT)
#define UL_MAX_SLOTS (1u << 24)
#define UL_NO_SLOT 0xFFFFFFFFu
#define UL_REAP_CHUNK 128
#define UL_MAX_ENTRIES 32768u
#define UL_CLOSE_BOUND_NS 2000000000LL
#define UL_IOV_MAX 1024

enum { SLOT_FREE = 0, SLOT_PENDING = 1, SLOT_RELEASING = 2 };

typedef struct {
    struct msghdr msg;
    Py_ssize_t nbufs;
    struct iovec *iov;
    Py_buffer bufs[];
} ul_msg;

typedef union {
    struct ul_ts ts;
    struct sockaddr sa;
    struct sockaddr_in sin;
    struct sockaddr_in6 sin6;
} ul_aux;

struct BufferRingObject;

/* The side data of an op that has any: the exported buffer of a single-buffer op (send, recv,
 * read, write) and the kernel-visible sockaddr/timespec of connect and (link) timeouts.  Kept
 * out of the slot so that ops without it cost only a slot (see ul_slot).  Blocks are malloc'd,
 * never move (sqe->addr may point at aux), are recycled through the ring's ext free list and
 * freed only at teardown. */
typedef struct ul_ext {
    struct ul_ext *next_free; /* while on the ring's free list */
    uint8_t has_buf;
    Py_buffer buf;
    ul_aux aux; /* kernel-visible: sockaddr for connect, timespec for timeouts */
} ul_ext;

/* One per op.  The long-lived ops -- a multishot recv per idle connection, multishot accept,
 * poll_add -- hold no buffer and no aux, so those live in an ext block that only the ops needing
 * one get: a server with 20,000 idle connections holds 20,000 slots.  sizeof(ul_slot) on x86-64:
 * 152 bytes with the Py_buffer and ul_aux inline, 48 without. */
typedef struct {
    PyObject *ctx;
    struct BufferRingObject *bufring;
    ul_msg *msg;
    ul_ext *ext; /* NULL unless the op holds a buffer or aux */
    uint32_t gen;
    uint32_t next_free;
    uint8_t state;
    uint8_t opcode;
    uint8_t quiet; /* prep_send(quiet=True): see Ring_wait's rule on quiet completions */
} ul_slot;

typedef struct {
    PyObject *ctx; /* owned reference */
    struct BufferRingObject *bufring; /* borrowed from the slot: CQE_F_BUFFER completions only */
    uint32_t idx;
    int32_t res;
    uint32_t flags;
    uint32_t final;
    uint32_t quiet;
} ul_done;

typedef struct RingObject {
    PyObject_HEAD
    int fd;
    int efd;
    unsigned setup_flags;
    unsigned features;
    unsigned sq_entries, cq_entries;
    /* submission queue */
    unsigned *sq_khead, *sq_ktail, *sq_kflags, *sq_array;
    unsigned sq_mask;
    unsigned sq_tail; /* next SQE to fill; published to *sq_ktail on submit */
    struct ul_sqe *sqes;
    /* completion queue */
    unsigned *cq_khead, *cq_ktail, *cq_koverflow;
    unsigned cq_mask;
    struct io_uring_cqe *cqes;
    /* mappings */
    void *sq_map, *cq_map, *sqe_map;
    size_t sq_map_sz, cq_map_sz, sqe_map_sz;
    /* slot table */
    ul_slot **chunks;
    uint32_t nchunks, chunks_cap, hwm, free_head;
    Py_ssize_t inflight;
    unsigned quiet_pending; /* quiet ops prepared since the last submission */
    Py_ssize_t loud;        /* harvest(): non-quiet completions seen (Ring_wait counts them) */
    ul_ext *ext_free;      /* recycled ext blocks */
    Py_ssize_t ext_blocks; /* ext blocks allocated (in use or on ext_free) */
    /* lifecycle */
    int closing, closed, teardown_pending, leaked;
    int busy;
    unsigned fork_gen;
    int owner_only, kernel_single_issuer;
    pid_t owner; /* the creating thread's kernel tid (what SINGLE_ISSUER binds to) */
    /* IORING_REGISTER_RING_FDS (5.18): the ring's index in the owner thread's registered-ring
     * table, or -1.  The owner's io_uring_enter calls pass it with IORING_ENTER_REGISTERED_RING
     * instead of the fd, which spares the kernel an fdget/fdput per call. */
    int reg_index;
    /* dispatch(): completions in the batch being (or last) delivered, and the send gate */
    Py_ssize_t batch;
    Py_ssize_t sync_send_batch;
    /* behaviour switches derived from the flags the kernel accepted */
    int taskrun_always, taskrun_flag;
    int wake_armed, wake_multishot;
    int cancel_done;
    int32_t cancel_res;
    int chain_open;
    unsigned chain_start;
    /* probe */
    int probed;
    uint8_t ops[256];
    /* statistics */
    unsigned long long overflow_events;
    unsigned long long stray;
    PyObject *backlog; /* completions reaped where they could not be returned (list) */
    PyObject *weakreflist;
} RingObject;

typedef struct BufferRingObject {
    PyObject_HEAD
    RingObject *ring;
    struct ul_buf *br;
    size_t br_sz;
    char *base;
    size_t base_sz;
    uint32_t count, mask, size;
    size_t stride; /* bytes from one buffer's start to the next's (see br_stride) */
    uint16_t gid;
    uint16_t tail;
    uint32_t out;   /* buffers with completions the application has not consumed yet */
    uint32_t *refs; /* per buffer id: those completions (0 or 1 unless incremental) */
    uint32_t *off;  /* incremental: per buffer id, where its next completion's bytes start */
    int inc;        /* registered with IOU_PBUF_RING_INC */
    int registered;
    Py_ssize_t exports;
    Py_ssize_t users; /* pending ops selecting from this group */
    PyObject *weakreflist;
} BufferRingObject;

static inline char *br_addr(BufferRingObject *b, uint32_t bid)
{
    return b->base + (size_t)bid * b->stride;
}

/* Buffer starts are spaced `size` rounded up to a cache line, plus one line when that would put
 * every start at the same offset in a 4 KiB span. Without the extra line, 32 KiB buffers all
 * begin in the same cache set: small messages landing in buffer after buffer (the ring hands
 * them out in FIFO order, cycling through all of them) then miss the L1 and L2 caches on every
 * receive, in the kernel's copy and again in ours. Spaced so, the first lines of consecutive
 * buffers fall in consecutive sets and the hot working set stays cached. */
static size_t br_stride(size_t size)
{
    size_t stride = (size + 63) & ~(size_t)63;
    size_t r = stride % 4096;
    if (stride >= 4096 && (r == 0 || (r > 64 && 4096 % r == 0)))
        stride += 64;
    return stride;
}

/* Save/restore the current exception around cleanup that may run Python code. */
#if PY_VERSION_HEX >= 0x030C0000
#define UL_EXC_SAVE PyObject *ul_saved_exc = PyErr_GetRaisedException()
#define UL_EXC_RESTORE PyErr_SetRaisedException(ul_saved_exc)
#else
#define UL_EXC_SAVE                                                                            \
    PyObject *ul_et, *ul_ev, *ul_tb;                                                           \
    PyErr_Fetch(&ul_et, &ul_ev, &ul_tb)
#define UL_EXC_RESTORE PyErr_Restore(ul_et, ul_ev, ul_tb)
#endif

static PyTypeObject Ring_Type;
static PyTypeObject BufferRing_Type;
static PyObject *UringUnavailable;
static unsigned ul_fork_gen;
static _Thread_local int ul_tls_busy;

/* ------------------------------------------------------------------------------------------ */
/* small helpers                                                                              */

static inline unsigned load_acq(const unsigned *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void store_rel(unsigned *p, unsigned v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

static int sys_setup(unsigned entries, struct io_uring_params *p)
{
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags, void *arg,
                     size_t argsz)
{
    return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, arg, argsz);
}

static int sys_register(int fd, unsigned op, void *arg, unsigned nr)
{
    return (int)syscall(__NR_io_uring_register, fd, op, arg, nr);
}

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The calling thread's kernel tid, cached per thread. Ownership is keyed on it, not on
 * pthread_self(): a pthread_t is reused by a thread created after its owner exited, and the
 * kernel (SINGLE_ISSUER) would then refuse that thread with EEXIST instead of our clear error. */
static __thread pid_t ul_tid_cache;

static inline pid_t ul_gettid(void)
{
    pid_t t = ul_tid_cache;
    if (!t)
        t = ul_tid_cache = (pid_t)syscall(SYS_gettid);
    return t;
}

/* io_uring_enter on r: through the registered ring index when the calling thread is the one
 * that registered it (the registration lives in that thread's io_uring context), else the fd. */
static inline int ring_enter(RingObject *r, unsigned to_submit, unsigned min_complete,
                             unsigned flags, void *arg, size_t argsz)
{
    if (r->reg_index >= 0 && r->owner == ul_gettid())
        return sys_enter(r->reg_index, to_submit, min_complete,
                         flags | IORING_ENTER_REGISTERED_RING, arg, argsz);
    return sys_enter(r->fd, to_submit, min_complete, flags, arg, argsz);
}

/* Register r's fd in the calling (owner) thread's registered-ring table; -1 if the kernel
 * cannot (older than 5.18: EINVAL; the table's 16 entries are taken: EBUSY...). */
static int ring_register_fd(RingObject *r)
{
    struct ul_rsrc_update up;
    memset(&up, 0, sizeof up);
    up.offset = 0xFFFFFFFFu; /* any free index */
    up.data = (uint64_t)r->fd;
    if (sys_register(r->fd, IORING_REGISTER_RING_FDS, &up, 1) != 1)
        return -1;
    return (int)up.offset;
}

/* Drop the registration: only the owner thread can (it is that thread's table). */
static void ring_unregister_fd(RingObject *r)
{
    if (r->reg_index < 0)
        return;
    if (r->owner == ul_gettid() && r->fd >= 0) {
        struct ul_rsrc_update up;
        memset(&up, 0, sizeof up);
        up.offset = (uint32_t)r->reg_index;
        (void)sys_register(r->fd, IORING_UNREGISTER_RING_FDS, &up, 1);
    }
    /* Elsewhere the entry stays in the owner's table, holding the ring's file open, until the
     * owner thread exits (the kernel drops the table then). */
    r->reg_index = -1;
}

static void ul_atfork_child(void)
{
    ul_fork_gen++;
    ul_tid_cache = 0; /* the forking thread has a new tid in the child */
}

static int read_proc_int(const char *path, long *out)
{
    char buf[64];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    char *end;
    long v = strtol(buf, &end, 10);
    if (end == buf)
        return -1;
    *out = v;
    return 0;
}

/* Why io_uring cannot be used here, in words naming the exact cause.  disabled/group: the
 * kernel.io_uring_disabled / kernel.io_uring_group sysctls, or -2 to read them from /proc. */
static PyObject *reason_for_errno_ex(int err, long disabled, long group)
{
    char msg[640];
    struct utsname u;
    const char *rel = uname(&u) == 0 ? u.release : "unknown";
    if (disabled == -2) {
        disabled = -1;
        read_proc_int("/proc/sys/kernel/io_uring_disabled", &disabled);
    }
    if (group == -2) {
        group = -1;
        read_proc_int("/proc/sys/kernel/io_uring_group", &group);
    }

    switch (err) {
    case ENOSYS:
        snprintf(msg, sizeof msg,
                 "io_uring_setup(2) failed with ENOSYS: kernel %s has no io_uring (older than "
                 "Linux 5.1, or built without CONFIG_IO_URING), or a seccomp filter answers "
                 "ENOSYS for the io_uring syscalls",
                 rel);
        break;
    case EPERM:
    case EACCES:
        if (disabled == 2) {
            snprintf(msg, sizeof msg,
                     "io_uring is disabled for all processes: /proc/sys/kernel/io_uring_disabled "
                     "= 2 (io_uring_setup(2) fails with %s); set it to 0 to enable it",
                     err == EPERM ? "EPERM" : "EACCES");
        } else if (disabled == 1) {
            if (group >= 0) {
                struct group *g = getgrgid((gid_t)group);
                snprintf(msg, sizeof msg,
                         "io_uring is restricted: /proc/sys/kernel/io_uring_disabled = 1 allows "
                         "only processes with CAP_SYS_ADMIN or in group kernel.io_uring_group = "
                         "%ld (%s); this process is in neither",
                         group, g ? g->gr_name : "no such group");
            } else {
                snprintf(msg, sizeof msg,
                         "io_uring is restricted: /proc/sys/kernel/io_uring_disabled = 1 allows "
                         "only processes with CAP_SYS_ADMIN or in kernel.io_uring_group; this "
                         "process is in neither");
            }
        } else {
            snprintf(msg, sizeof msg,
                     "io_uring_setup(2) failed with %s although kernel.io_uring_disabled = %ld: a "
                     "seccomp filter or container security policy blocks the io_uring syscalls "
                     "(e.g. Docker's or containerd's default seccomp profile, gVisor, a hardened "
                     "systemd unit)",
                     err == EPERM ? "EPERM" : "EACCES", disabled < 0 ? 0L : disabled);
        }
        break;
    case ENOMEM:
        snprintf(msg, sizeof msg,
                 "io_uring_setup(2) failed with ENOMEM: out of memory, or the locked-memory "
                 "limit (RLIMIT_MEMLOCK, which kernels before 5.12 charge rings to) is too low");
        break;
    case ENOTSUP:
        snprintf(msg, sizeof msg,
                 "kernel %s lacks IORING_FEAT_EXT_ARG (io_uring_enter with a timeout, Linux "
                 "5.11); this binding needs it",
                 rel);
        break;
    default:
        snprintf(msg, sizeof msg, "io_uring_setup(2) failed: %s (errno %d)", strerror(err), err);
        break;
    }
    return PyUnicode_FromString(msg);
}

static PyObject *reason_for_errno(int err) { return reason_for_errno_ex(err, -2, -2); }

static void raise_unavailable(int err)
{
    PyObject *reason = reason_for_errno(err);
    if (!reason)
        return;
    PyObject *exc = PyObject_CallFunction(UringUnavailable, "iO", err, reason);
    Py_DECREF(reason);
    if (exc) {
        PyErr_SetObject(UringUnavailable, exc);
        Py_DECREF(exc);
    }
}

static void raise_errno_msg(int err, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", err, msg);
    if (exc) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
}

/* Raise for a failed io_uring_enter.  EEXIST means a single-issuer rule was broken. */
static void raise_enter_error(int err)
{
    if (err == EEXIST) {
        PyErr_SetString(PyExc_RuntimeError,
                        "io_uring_enter failed with EEXIST: this ring was created with "
                        "SINGLE_ISSUER/DEFER_TASKRUN and may only be used from the thread that "
                        "created it (create it with single_issuer=False for multi-threaded use)");
        return;
    }
    raise_errno_msg(err, "io_uring_enter failed: %s", strerror(err));
}

/* ------------------------------------------------------------------------------------------ */
/* keyword argument parsing for METH_FASTCALL | METH_KEYWORDS (PyArg_Parse* is too slow for   */
/* the per-op path).  Names are interned once; call sites pass interned keyword strings, so    */
/* matching is a pointer compare.                                                             */

typedef struct {
    const char *fname;
    const char *const *names; /* NULL-terminated */
    int npos;                 /* how many may be given positionally */
    int nreq;                 /* how many are required */
    PyObject **interned;
    int n;
} ul_sig;

static int sig_init(ul_sig *s)
{
    int n = 0;
    while (s->names[n])
        n++;
    s->n = n;
    s->interned = PyMem_Calloc((size_t)n + 1, sizeof(PyObject *));
    if (!s->interned)
        return -1;
    for (int i = 0; i < n; i++) {
        s->interned[i] = PyUnicode_InternFromString(s->names[i]);
        if (!s->interned[i])
            return -1;
    }
    return 0;
}

static int ul_parse(ul_sig *s, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                    PyObject **out)
{
    if (nargs > s->npos) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %d positional arguments (%zd given)",
                     s->fname, s->npos, nargs);
        return -1;
    }
    for (int i = 0; i < s->n; i++)
        out[i] = i < nargs ? args[i] : NULL;
    if (kwnames) {
        Py_ssize_t nk = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t j = 0; j < nk; j++) {
            PyObject *key = PyTuple_GET_ITEM(kwnames, j);
            int k = -1;
            for (int i = 0; i < s->n; i++) {
                if (s->interned[i] == key) {
                    k = i;
                    break;
                }
            }
            if (k < 0) {
                for (int i = 0; i < s->n; i++) {
                    int eq = PyUnicode_Compare(s->interned[i], key);
                    if (eq == -1 && PyErr_Occurred())
                        return -1;
                    if (eq == 0) {
                        k = i;
                        break;
                    }
                }
            }
            if (k < 0) {
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'",
                             s->fname, key);
                return -1;
            }
            if (out[k]) {
                PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'",
                             s->fname, s->names[k]);
                return -1;
            }
            out[k] = args[nargs + j];
        }
    }
    for (int i = 0; i < s->nreq; i++) {
        if (!out[i]) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", s->fname,
                         s->names[i]);
            return -1;
        }
    }
    return 0;
}

static int arg_bool(PyObject *o, int dflt)
{
    if (!o)
        return dflt;
    if (o == Py_True)
        return 1;
    if (o == Py_False)
        return 0;
    return PyObject_IsTrue(o);
}

static int arg_long(PyObject *o, long long dflt, long long lo, long long hi, const char *what,
                    long long *out)
{
    if (!o) {
        *out = dflt;
        return 0;
    }
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < lo || v > hi) {
        PyErr_Format(PyExc_ValueError, "%s out of range: %lld", what, v);
        return -1;
    }
    *out = v;
    return 0;
}

static int arg_fd(PyObject *o, int *out)
{
    int fd = PyObject_AsFileDescriptor(o);
    if (fd < 0)
        return -1;
    *out = fd;
    return 0;
}

static int arg_seconds(PyObject *o, struct ul_ts *ts)
{
    double s = PyFloat_AsDouble(o);
    if (s == -1.0 && PyErr_Occurred())
        return -1;
    if (!(s >= 0.0) || s > 1e15) {
        PyErr_SetString(PyExc_ValueError, "seconds must be a finite number >= 0");
        return -1;
    }
    ts->tv_sec = (int64_t)s;
    ts->tv_nsec = (long long)((s - (double)ts->tv_sec) * 1e9);
    if (ts->tv_nsec >= 1000000000LL)
        ts->tv_nsec = 999999999LL;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* slot table                                                                                 */

static inline ul_slot *slot_at(RingObject *r, uint32_t idx)
{
    return &r->chunks[idx >> UL_CHUNK_SHIFT][idx & (UL_CHUNK - 1)];
}

/* Pure C.  Returns UL_NO_SLOT (no Python error set) when memory or the slot limit runs out. */
static uint32_t slot_alloc(RingObject *r)
{
    uint32_t idx = r->free_head;
    if (idx != UL_NO_SLOT) {
        r->free_head = slot_at(r, idx)->next_free;
        return idx;
    }
    if (r->hwm >= r->nchunks * UL_CHUNK) {
        if (r->hwm >= UL_MAX_SLOTS)
            return UL_NO_SLOT;
        if (r->nchunks == r->chunks_cap) {
            uint32_t cap = r->chunks_cap ? r->chunks_cap * 2 : 4;
            ul_slot **c = realloc(r->chunks, cap * sizeof(ul_slot *));
            if (!c)
                return UL_NO_SLOT;
            r->chunks = c;
            r->chunks_cap = cap;
        }
        ul_slot *chunk = calloc(UL_CHUNK, sizeof(ul_slot));
        if (!chunk)
            return UL_NO_SLOT;
        r->chunks[r->nchunks++] = chunk;
    }
    return r->hwm++;
}

static inline void slot_push_free(RingObject *r, uint32_t idx, ul_slot *s)
{
    s->gen++;
    s->state = SLOT_FREE;
    s->next_free = r->free_head;
    r->free_head = idx;
}

/* Pure C.  An ext block from the free list, else a new one; NULL (no Python error set) when
 * memory runs out.  Blocks are never freed before teardown, so a steady state allocates none. */
static ul_ext *ext_alloc(RingObject *r)
{
    ul_ext *e = r->ext_free;
    if (e) {
        r->ext_free = e->next_free;
        return e;
    }
    e = malloc(sizeof *e);
    if (e)
        r->ext_blocks++;
    return e;
}

static inline void ext_push_free(RingObject *r, ul_ext *e)
{
    e->has_buf = 0;
    e->next_free = r->ext_free;
    r->ext_free = e;
}

/* Releases what a finished (RELEASING) slot holds.  Runs Python code (buffer release, DECREF),
 * so everything is detached from the slot first; the ext block goes back to the free list
 * before any of it runs (the kernel is done with its aux: this is the final completion). */
static void slot_release_resources(RingObject *r, ul_slot *s)
{
    int has = 0;
    Py_buffer buf;
    ul_ext *e = s->ext;
    s->ext = NULL;
    if (e) {
        has = e->has_buf;
        if (has)
            buf = e->buf;
        ext_push_free(r, e);
    }
    ul_msg *m = s->msg;
    s->msg = NULL;
    struct BufferRingObject *br = s->bufring;
    s->bufring = NULL;
    PyObject *ctx = s->ctx;
    s->ctx = NULL;

    if (has)
        PyBuffer_Release(&buf);
    if (m) {
        for (Py_ssize_t k = 0; k < m->nbufs; k++)
            PyBuffer_Release(&m->bufs[k]);
        PyMem_Free(m);
    }
    if (br) {
        br->users--;
        Py_DECREF(br);
    }
    Py_XDECREF(ctx);
}

static void slot_finish(RingObject *r, uint32_t idx)
{
    ul_slot *s = slot_at(r, idx);
    slot_release_resources(r, s);
    slot_push_free(r, idx, s);
}

/* ------------------------------------------------------------------------------------------ */
/* busy accounting and teardown (Rule 4)                                                      */

static void ring_teardown(RingObject *r);

static inline void busy_enter(RingObject *r)
{
    r->busy++;
    ul_tls_busy++;
}

static inline void busy_exit(RingObject *r)
{
    r->busy--;
    ul_tls_busy--;
    if (r->busy == 0 && r->teardown_pending)
        ring_teardown(r);
}

static int ring_check(RingObject *r)
{
    if (r->closing) {
        PyErr_SetString(PyExc_ValueError, "I/O operation on a closed ring");
        return -1;
    }
    if (r->fork_gen != ul_fork_gen) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this ring was created before fork(); the child cannot use it (the "
                        "mapping is shared with the parent's ring): create a new Ring");
        return -1;
    }
    if (r->owner_only && r->owner != ul_gettid()) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this ring was created with single_issuer=True and may only be used from "
                        "the thread that created it (wake() excepted); create it with "
                        "single_issuer=False to share it between threads");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* submission                                                                                 */

static inline unsigned sq_unsubmitted(RingObject *r) { return r->sq_tail - load_acq(r->sq_khead); }

/* Next SQE, zeroed.  Caller has ensured space; pure C. */
static inline struct ul_sqe *sqe_next(RingObject *r)
{
    struct ul_sqe *sqe = &r->sqes[r->sq_tail & r->sq_mask];
    r->sq_tail++;
    memset(sqe, 0, sizeof *sqe);
    return sqe;
}

static int harvest_to_backlog(RingObject *r);

/* Any thread, any flags: a plain write(2) to the eventfd; the ring's multishot poll on it
 * posts an internal completion, which ends one blocked wait().  The GIL is held, so close()
 * cannot close the eventfd between the check and the write. */
static void wake_waiter(RingObject *r)
{
    if (r->efd >= 0 && !r->closing) {
        uint64_t one = 1;
        ssize_t w = write(r->efd, &one, sizeof one);
        (void)w;
    }
}

/* Submit pending SQEs.  hold_chain: keep back an unfinished IOSQE_IO_LINK chain (auto-submit
 * from a full SQ must not cut a chain the caller is still building).  Returns the number
 * submitted or -1 with an exception. */
static int flush_sq(RingObject *r, int hold_chain)
{
    int tries = 0;
    for (;;) {
        unsigned head = load_acq(r->sq_khead);
        unsigned end = (hold_chain && r->chain_open) ? r->chain_start : r->sq_tail;
        unsigned n = end - head;
        if (n == 0) {
            if (hold_chain && r->chain_open && r->sq_tail - head >= r->sq_entries) {
                PyErr_Format(PyExc_RuntimeError,
                             "a link chain (link=True/hardlink=True) longer than the submission "
                             "queue (%u entries) cannot be submitted as one chain",
                             r->sq_entries);
                return -1;
            }
            return 0;
        }
        store_rel(r->sq_ktail, r->sq_tail);
        int ret = ring_enter(r, n, 0, 0, NULL, 0);
        if (ret >= 0) {
            if (!hold_chain || !r->chain_open)
                if (load_acq(r->sq_khead) == r->sq_tail)
                    r->chain_open = 0;
            if (ret > 0)
                return ret;
            /* 0 consumed: another thread's io_uring_enter (a waiter, GIL released) may have
             * taken these SQEs already.  Then there is nothing to retry; harvesting into the
             * backlog here would hide completions from that sleeping waiter. */
            if (load_acq(r->sq_khead) != head)
                continue;
            errno = EAGAIN;
        }
        int err = errno;
        if (err == EINTR)
            continue;
        if ((err == EAGAIN || err == EBUSY) && tries++ < 8) {
            /* EBUSY: the kernel's CQ overflow backlog is full; EAGAIN: no memory for requests.
             * Free the CQ by moving completions to the backlog (returned by the next
             * wait()/reap()), then retry. */
            if (harvest_to_backlog(r) < 0)
                return -1;
            /* A thread asleep in wait() does not look at the backlog: wake it. */
            wake_waiter(r);
            if (tries > 2)
                usleep(1000);
            continue;
        }
        raise_enter_error(err);
        return -1;
    }
}

/* Make room for one SQE.  May run Python code (rare EBUSY path); the caller re-checks closing. */
static inline int ensure_sq_space(RingObject *r)
{
    while (sq_unsubmitted(r) >= r->sq_entries) {
        if (r->closing)
            return 0;
        if (flush_sq(r, 1) < 0)
            return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* reaping: phase 1 (pure C)                                                                  */

static void bufring_mark_out(struct BufferRingObject *br, uint32_t bid)
{
    if (bid < br->count && !br->refs[bid]++)
        br->out++;
}

static void arm_wake(RingObject *r);

static void internal_cqe(RingObject *r, uint32_t tag, int32_t res, uint32_t flags, int *woken)
{
    if (tag == UL_TAG_WAKE) {
        if (res > 0) {
            uint64_t v;
            ssize_t rd = read(r->efd, &v, sizeof v); /* drain; EAGAIN is fine */
            (void)rd;
            if (woken)
                *woken = 1;
        }
        if (!(flags & IORING_CQE_F_MORE)) {
            r->wake_armed = 0;
            if (res == -EINVAL && r->wake_multishot)
                r->wake_multishot = 0; /* kernel < 5.13: fall back to one-shot poll, re-armed */
        }
    } else if (tag == UL_TAG_CANCEL) {
        if (!r->cancel_done || res == -EINVAL) {
            r->cancel_done = 1;
            r->cancel_res = res;
        }
    }
}

/* Copy up to `room` CQEs into d[] and advance the CQ head.  Flushes the kernel's overflow list
 * (IORING_SQ_CQ_OVERFLOW) with a GETEVENTS enter whenever the visible CQ runs dry.  Pure C:
 * may make syscalls, never runs Python code. */
static int harvest(RingObject *r, ul_done *d, int room, int *woken)
{
    int n = 0;
    unsigned head = *r->cq_khead;
    unsigned tail = load_acq(r->cq_ktail);
    while (n < room) {
        if (head == tail) {
            store_rel(r->cq_khead, head);
            if (__atomic_load_n(r->sq_kflags, __ATOMIC_ACQUIRE) & IORING_SQ_CQ_OVERFLOW) {
                r->overflow_events++;
                int ret;
                do
                    ret = ring_enter(r, 0, 0, IORING_ENTER_GETEVENTS, NULL, 0);
                while (ret < 0 && errno == EINTR);
                tail = load_acq(r->cq_ktail);
                if (tail != head)
                    continue;
            }
            break;
        }
        struct io_uring_cqe *c = &r->cqes[head & r->cq_mask];
        uint64_t ud = c->user_data;
        int32_t res = c->res;
        uint32_t fl = c->flags;
        head++;
        uint32_t idx = (uint32_t)ud;
        if (idx == UL_INTERNAL_IDX) {
            internal_cqe(r, (uint32_t)(ud >> 32), res, fl, woken);
            continue;
        }
        if (idx >= r->hwm) {
            r->stray++;
            continue;
        }
        ul_slot *s = slot_at(r, idx);
        if (s->state != SLOT_PENDING || s->gen != (uint32_t)(ud >> 32)) {
            r->stray++;
            continue;
        }
        if (s->bufring && (fl & IORING_CQE_F_BUFFER))
            bufring_mark_out(s->bufring, fl >> IORING_CQE_BUFFER_SHIFT);
        d[n].idx = idx;
        d[n].res = res;
        d[n].flags = fl;
        d[n].ctx = s->ctx;
        d[n].bufring = (fl & IORING_CQE_F_BUFFER) ? s->bufring : NULL;
        d[n].quiet = s->quiet;
        if (!s->quiet)
            r->loud++;
        if (fl & IORING_CQE_F_MORE) {
            Py_INCREF(s->ctx);
            d[n].final = 0;
        } else {
            s->ctx = NULL; /* the reference moves into the completion tuple */
            s->state = SLOT_RELEASING;
            d[n].final = 1;
            r->inflight--;
        }
        n++;
    }
    store_rel(r->cq_khead, head);
    return n;
}

/* ------------------------------------------------------------------------------------------ */
/* reaping: phase 2 (Python code allowed; caller is counted in busy)                          */

static int deliver(RingObject *r, ul_done *d, int n, PyObject *list)
{
    int i = 0;
    for (; i < n; i++) {
        PyObject *t = PyTuple_New(3);
        if (!t)
            goto fail;
        PyTuple_SET_ITEM(t, 0, d[i].ctx);
        d[i].ctx = NULL;
        PyObject *res = PyLong_FromLong(d[i].res);
        PyObject *fl = PyLong_FromUnsignedLong(d[i].flags);
        if (!res || !fl) {
            Py_XDECREF(res);
            Py_XDECREF(fl);
            Py_DECREF(t);
            goto fail;
        }
        PyTuple_SET_ITEM(t, 1, res);
        PyTuple_SET_ITEM(t, 2, fl);
        int err = PyList_Append(list, t);
        Py_DECREF(t);
        if (d[i].final)
            slot_finish(r, d[i].idx);
        if (err < 0) {
            i++;
            goto fail;
        }
    }
    return 0;
fail:
    for (; i < n; i++) {
        Py_XDECREF(d[i].ctx);
        if (d[i].final)
            slot_finish(r, d[i].idx);
    }
    return -1;
}

static void discard(RingObject *r, ul_done *d, int n)
{
    for (int i = 0; i < n; i++) {
        Py_XDECREF(d[i].ctx);
        if (d[i].final)
            slot_finish(r, d[i].idx);
    }
}

/* Reap everything available into list (up to max entries in list when max > 0). */
static int harvest_into(RingObject *r, PyObject *list, Py_ssize_t max, int *woken)
{
    for (;;) {
        int room = UL_REAP_CHUNK;
        if (max > 0) {
            Py_ssize_t left = max - PyList_GET_SIZE(list);
            if (left <= 0)
                return 0;
            if (left < room)
                room = (int)left;
        }
        ul_done d[UL_REAP_CHUNK];
        int n = harvest(r, d, room, woken);
        if (n == 0)
            return 0;
        if (deliver(r, d, n, list) < 0)
            return -1;
        if (n < room || r->closing)
            return 0;
    }
}

static int harvest_to_backlog(RingObject *r)
{
    busy_enter(r);
    if (!r->backlog) {
        r->backlog = PyList_New(0);
        if (!r->backlog) {
            busy_exit(r);
            return -1;
        }
    }
    PyObject *bl = r->backlog;
    Py_INCREF(bl);
    int ret = harvest_into(r, bl, 0, NULL);
    Py_DECREF(bl);
    busy_exit(r);
    return ret;
}

/* The list a wait()/reap() starts from: the backlog (up to max), else a new list. */
static PyObject *take_backlog(RingObject *r, Py_ssize_t max)
{
    PyObject *bl = r->backlog;
    if (!bl || PyList_GET_SIZE(bl) == 0)
        return PyList_New(0);
    if (max > 0 && PyList_GET_SIZE(bl) > max) {
        PyObject *head = PyList_GetSlice(bl, 0, max);
        if (!head)
            return NULL;
        if (PyList_SetSlice(bl, 0, max, NULL) < 0) {
            Py_DECREF(head);
            return NULL;
        }
        return head;
    }
    r->backlog = NULL;
    return bl;
}

/* Put completions back where the next wait()/reap() will find them (before raising). */
static void restore_backlog(RingObject *r, PyObject *results)
{
    if (!results || PyList_GET_SIZE(results) == 0)
        return;
    UL_EXC_SAVE;
    if (!r->backlog) {
        Py_INCREF(results);
        r->backlog = results;
    } else if (PyList_SetSlice(r->backlog, 0, 0, results) < 0) {
        PyErr_Clear();
    }
    UL_EXC_RESTORE;
}

/* ------------------------------------------------------------------------------------------ */
/* wake-up: an eventfd watched by a multishot POLL_ADD owned by the ring                       */

static void arm_wake(RingObject *r)
{
    if (r->wake_armed || r->closing || r->efd < 0)
        return;
    if (sq_unsubmitted(r) >= r->sq_entries)
        return; /* no room now; the next wait() re-arms */
    /* The SQE lands after any open link chain and must not join it. */
    if (r->chain_open)
        return;
    struct ul_sqe *sqe = sqe_next(r);
    sqe->opcode = UL_OP_POLL_ADD;
    sqe->fd = r->efd;
    sqe->op_flags = POLLIN;
    sqe->len = r->wake_multishot ? IORING_POLL_ADD_MULTI : 0;
    sqe->user_data = UL_UD(UL_TAG_WAKE);
    r->wake_armed = 1;
}

/* ------------------------------------------------------------------------------------------ */
/* close and teardown                                                                         */

static void ring_teardown(RingObject *r)
{
    if (r->closed)
        return;
    r->teardown_pending = 0;
    r->closed = 1;
    r->closing = 1;
    if (!r->leaked) {
        /* Every op has finished, so no slot should still hold an ext block; one that does goes
         * with its chunk, exactly as the slot memory does. */
        for (uint32_t i = 0; i < r->hwm; i++) {
            ul_slot *s = slot_at(r, i);
            if (s->ext) {
                free(s->ext);
                s->ext = NULL;
                r->ext_blocks--;
            }
        }
        for (uint32_t c = 0; c < r->nchunks; c++)
            free(r->chunks[c]);
        free(r->chunks);
        r->chunks = NULL;
        r->nchunks = r->chunks_cap = r->hwm = 0;
        r->free_head = UL_NO_SLOT;
    }
    /* Free-listed blocks belong to finished ops even on a leaked ring; leaked slots keep theirs
     * (the kernel may still read their aux). */
    while (r->ext_free) {
        ul_ext *e = r->ext_free;
        r->ext_free = e->next_free;
        free(e);
        r->ext_blocks--;
    }
    if (r->sqe_map && r->sqe_map != MAP_FAILED)
        munmap(r->sqe_map, r->sqe_map_sz);
    if (r->cq_map && r->cq_map != MAP_FAILED && r->cq_map != r->sq_map)
        munmap(r->cq_map, r->cq_map_sz);
    if (r->sq_map && r->sq_map != MAP_FAILED)
        munmap(r->sq_map, r->sq_map_sz);
    r->sqe_map = r->cq_map = r->sq_map = NULL;
    ring_unregister_fd(r);
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
    if (r->efd >= 0)
        close(r->efd);
    r->efd = -1;
    PyObject *bl = r->backlog;
    r->backlog = NULL;
    Py_XDECREF(bl);
}

/* Pending slots that never completed: keep everything the kernel may still touch (buffers,
 * side data, the slot memory itself) alive forever; drop only the ctx. */
static void leak_pending(RingObject *r)
{
    r->leaked = 1;
    for (uint32_t i = 0; i < r->hwm; i++) {
        ul_slot *s = slot_at(r, i);
        if (s->state == SLOT_PENDING) {
            PyObject *ctx = s->ctx;
            s->ctx = NULL;
            Py_XDECREF(ctx);
        }
    }
}

/* Queue an ASYNC_CANCEL for every pending slot (kernels without IORING_ASYNC_CANCEL_ANY). */
static void cancel_each(RingObject *r)
{
    for (uint32_t i = 0; i < r->hwm; i++) {
        ul_slot *s = slot_at(r, i);
        if (s->state != SLOT_PENDING)
            continue;
        while (sq_unsubmitted(r) >= r->sq_entries) {
            store_rel(r->sq_ktail, r->sq_tail);
            if (ring_enter(r, sq_unsubmitted(r), 0, 0, NULL, 0) <= 0 && errno != EINTR)
                return;
        }
        struct ul_sqe *sqe = sqe_next(r);
        sqe->opcode = UL_OP_ASYNC_CANCEL;
        sqe->fd = -1;
        sqe->addr = ((uint64_t)s->gen << 32) | i;
        sqe->user_data = UL_UD(UL_TAG_NOP);
    }
    if (r->wake_armed && sq_unsubmitted(r) < r->sq_entries) {
        struct ul_sqe *sqe = sqe_next(r);
        sqe->opcode = UL_OP_ASYNC_CANCEL;
        sqe->fd = -1;
        sqe->addr = UL_UD(UL_TAG_WAKE);
        sqe->user_data = UL_UD(UL_TAG_NOP);
    }
}

/* Submit everything pending plus a cancel-everything op, then reap (discarding) until every op
 * has delivered its final completion or the bound expires.  Caller is counted in busy. */
static void cancel_and_drain(RingObject *r)
{
    long long deadline = now_ns() + UL_CLOSE_BOUND_NS;
    int cancel_sent = 0, fallback_sent = 0;
    r->chain_open = 0; /* a chain still being built is cut; its ops are cancelled anyway */
    for (;;) {
        ul_done d[UL_REAP_CHUNK];
        int n;
        while ((n = harvest(r, d, UL_REAP_CHUNK, NULL)) > 0)
            discard(r, d, n);
        if (r->inflight == 0 && !r->wake_armed)
            break;
        if (!cancel_sent) {
            if (sq_unsubmitted(r) >= r->sq_entries) {
                store_rel(r->sq_ktail, r->sq_tail);
                if (ring_enter(r, sq_unsubmitted(r), 0, 0, NULL, 0) < 0 && errno != EINTR)
                    break;
                continue;
            }
            struct ul_sqe *sqe = sqe_next(r);
            sqe->opcode = UL_OP_ASYNC_CANCEL;
            sqe->fd = -1;
            sqe->op_flags = IORING_ASYNC_CANCEL_ANY;
            sqe->user_data = UL_UD(UL_TAG_CANCEL);
            r->cancel_done = 0;
            cancel_sent = 1;
        } else if (r->cancel_done && r->cancel_res == -EINVAL && !fallback_sent) {
            cancel_each(r); /* kernel < 5.19: no CANCEL_ANY */
            fallback_sent = 1;
        }
        long long left = deadline - now_ns();
        if (left <= 0)
            break;
        if (left > 100000000LL)
            left = 100000000LL;
        struct ul_ts ts = {left / 1000000000LL, left % 1000000000LL};
        struct ul_getevents_arg arg;
        memset(&arg, 0, sizeof arg);
        arg.ts = (uint64_t)(uintptr_t)&ts;
        unsigned to_submit = sq_unsubmitted(r);
        store_rel(r->sq_ktail, r->sq_tail);
        int ret, err;
        Py_BEGIN_ALLOW_THREADS
        ret = ring_enter(r, to_submit, 1, IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, &arg,
                        sizeof arg);
        err = errno;
        Py_END_ALLOW_THREADS
        if (ret < 0 && err != ETIME && err != EINTR && err != EAGAIN && err != EBUSY)
            break;
    }
    if (r->inflight > 0)
        leak_pending(r);
}

/* Fill the CQ with internal NOPs so every thread blocked in io_uring_enter wakes, whatever its
 * min_complete (the kernel caps it at the CQ size).  Used only by rings without SINGLE_ISSUER,
 * the only ones other threads can be waiting on. */
static void flood_wake(RingObject *r)
{
    unsigned posted = 0;
    while (posted < r->cq_entries) {
        while (sq_unsubmitted(r) < r->sq_entries && posted < r->cq_entries) {
            struct ul_sqe *sqe = sqe_next(r);
            sqe->opcode = UL_OP_NOP;
            sqe->user_data = UL_UD(UL_TAG_NOP);
            posted++;
        }
        store_rel(r->sq_ktail, r->sq_tail);
        if (ring_enter(r, sq_unsubmitted(r), 0, 0, NULL, 0) < 0 && errno != EINTR)
            return;
    }
}

/* from_finalizer: called from tp_finalize (GC or dealloc), where raising is impossible. */
static int ring_close_impl(RingObject *r, int from_finalizer)
{
    if (r->closed || r->closing)
        return 0;
    int forked = r->fork_gen != ul_fork_gen;
    int other_thread = r->owner != ul_gettid();
    if (!forked && r->owner_only && other_thread && !from_finalizer) {
        PyErr_SetString(PyExc_RuntimeError,
                        "close() of a single_issuer ring must be called from the thread that "
                        "created it");
        return -1;
    }
    r->closing = 1;
    if (forked) {
        /* The ops belong to the parent's ring; the kernel never touches the child's copies of
         * the buffers, so releasing our references is safe.  Nothing is submitted. */
        for (uint32_t i = 0; i < r->hwm; i++) {
            ul_slot *s = slot_at(r, i);
            if (s->state == SLOT_PENDING) {
                slot_release_resources(r, s);
                slot_push_free(r, i, s);
            }
        }
        r->inflight = 0;
    } else if (r->kernel_single_issuer && other_thread) {
        /* The kernel refuses this thread's submissions and waits, so we can neither cancel
         * nor observe completions.  Closing the fd makes the kernel cancel everything; the
         * buffers stay pinned because we cannot know when it is done with them. */
        if (r->inflight > 0)
            leak_pending(r);
    } else {
        busy_enter(r);
        cancel_and_drain(r);
        if (r->busy > 1 && !r->kernel_single_issuer)
            flood_wake(r);
        if (r->efd >= 0) {
            uint64_t one = 1;
            ssize_t w = write(r->efd, &one, sizeof one);
            (void)w;
        }
        busy_exit(r);
        if (r->closed)
            return 0;
        /* Other threads are still inside wait(): let them leave before unmapping (unless this
         * thread is itself inside a ring call further up the stack, which cannot leave). */
        if (r->busy > 0 && ul_tls_busy == 0) {
            long long deadline = now_ns() + 1000000000LL;
            while (r->busy > 0 && now_ns() < deadline) {
                Py_BEGIN_ALLOW_THREADS
                usleep(1000);
                Py_END_ALLOW_THREADS
            }
        }
    }
    if (r->busy > 0)
        r->teardown_pending = 1; /* the last thread to leave tears down */
    else
        ring_teardown(r);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Ring type                                                                                  */

static int ring_setup(RingObject *r, unsigned entries, unsigned user_flags, unsigned cq_entries,
                      int single_issuer)
{
    /* Fastest first; each fallback drops what an older kernel rejects with EINVAL.
     * SUBMIT_ALL (5.18): keep submitting the batch when one SQE fails.
     * COOP_TASKRUN + TASKRUN_FLAG (5.19): no IPI to run completion work; the kernel flags
     *   IORING_SQ_TASKRUN instead, which reap() checks to skip needless syscalls.
     * SINGLE_ISSUER + DEFER_TASKRUN (6.1): completion work runs only inside our
     *   io_uring_enter(GETEVENTS), batched, never interrupting Python.  The price: only the
     *   creating thread may submit or wait, hence single_issuer=False for worker pools, which
     *   get SUBMIT_ALL only: with COOP_TASKRUN a completion would sit on the *submitting*
     *   thread until it next enters the kernel, while other workers sleep in wait(). */
    static const unsigned tries_si[] = {
        IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG |
            IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
        IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG |
            IORING_SETUP_SINGLE_ISSUER,
        IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
        IORING_SETUP_SUBMIT_ALL,
        0,
    };
    static const unsigned tries_mt[] = {IORING_SETUP_SUBMIT_ALL, 0};
    const unsigned *tries = single_issuer ? tries_si : tries_mt;
    size_t ntries = single_issuer ? sizeof tries_si / sizeof tries_si[0]
                                  : sizeof tries_mt / sizeof tries_mt[0];
    struct io_uring_params p;
    int fd = -1, err = 0;
    for (size_t i = 0; i < ntries; i++) {
        memset(&p, 0, sizeof p);
        p.flags = tries[i] | user_flags | (cq_entries ? IORING_SETUP_CQSIZE : 0);
        p.cq_entries = cq_entries;
        fd = sys_setup(entries, &p);
        if (fd >= 0)
            break;
        err = errno;
        if (err != EINVAL)
            break;
    }
    if (fd < 0) {
        if (err == ENOSYS || err == EPERM || err == EACCES)
            raise_unavailable(err);
        else if (err == EINVAL)
            raise_errno_msg(err,
                            "io_uring_setup(entries=%u, cq_entries=%u) rejected the requested "
                            "flags 0x%x (EINVAL): this kernel does not support them, or they "
                            "conflict (e.g. DEFER_TASKRUN needs SINGLE_ISSUER)",
                            entries, cq_entries, user_flags);
        else if (err == ENOMEM)
            raise_errno_msg(err, "%s", "io_uring_setup failed with ENOMEM: out of memory or "
                                       "RLIMIT_MEMLOCK too low (kernels before 5.12)");
        else
            raise_errno_msg(err, "io_uring_setup failed: %s", strerror(err));
        return -1;
    }
    r->fd = fd;
    r->setup_flags = p.flags;
    r->features = p.features;
    r->sq_entries = p.sq_entries;
    r->cq_entries = p.cq_entries;
    if (!(p.features & IORING_FEAT_EXT_ARG)) {
        raise_unavailable(ENOTSUP);
        return -1;
    }

    r->sq_map_sz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    r->cq_map_sz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    int single_mmap = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
    if (single_mmap) {
        if (r->cq_map_sz > r->sq_map_sz)
            r->sq_map_sz = r->cq_map_sz;
        r->cq_map_sz = r->sq_map_sz;
    }
    r->sq_map = mmap(NULL, r->sq_map_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                     IORING_OFF_SQ_RING);
    if (r->sq_map == MAP_FAILED) {
        r->sq_map = NULL;
        raise_errno_msg(errno, "mmap of the io_uring SQ ring failed: %s", strerror(errno));
        return -1;
    }
    if (single_mmap) {
        r->cq_map = r->sq_map;
    } else {
        r->cq_map = mmap(NULL, r->cq_map_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                         fd, IORING_OFF_CQ_RING);
        if (r->cq_map == MAP_FAILED) {
            r->cq_map = NULL;
            raise_errno_msg(errno, "mmap of the io_uring CQ ring failed: %s", strerror(errno));
            return -1;
        }
    }
    r->sqe_map_sz = p.sq_entries * sizeof(struct ul_sqe);
    r->sqe_map = mmap(NULL, r->sqe_map_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                      IORING_OFF_SQES);
    if (r->sqe_map == MAP_FAILED) {
        r->sqe_map = NULL;
        raise_errno_msg(errno, "mmap of the io_uring SQEs failed: %s", strerror(errno));
        return -1;
    }
    char *sq = r->sq_map, *cq = r->cq_map;
    r->sq_khead = (unsigned *)(sq + p.sq_off.head);
    r->sq_ktail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_kflags = (unsigned *)(sq + p.sq_off.flags);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->sq_mask = *(unsigned *)(sq + p.sq_off.ring_mask);
    r->sqes = r->sqe_map;
    r->cq_khead = (unsigned *)(cq + p.cq_off.head);
    r->cq_ktail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_koverflow = (unsigned *)(cq + p.cq_off.overflow);
    r->cq_mask = *(unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    /* The SQ index array maps ring position -> SQE index.  Identity, set once: then filling
     * SQE (tail & mask) and bumping the tail is all a submission costs. */
    for (unsigned i = 0; i < p.sq_entries; i++)
        r->sq_array[i] = i;
    r->sq_tail = *r->sq_ktail;

    unsigned f = p.flags;
    r->kernel_single_issuer = (f & IORING_SETUP_SINGLE_ISSUER) != 0;
    r->owner_only = single_issuer || r->kernel_single_issuer;
    r->taskrun_flag = (f & IORING_SETUP_TASKRUN_FLAG) != 0;
    r->taskrun_always =
        (f & (IORING_SETUP_COOP_TASKRUN | IORING_SETUP_DEFER_TASKRUN)) && !r->taskrun_flag;

    /* Probe the supported opcodes. */
    struct ul_probe *probe = PyMem_Calloc(1, sizeof *probe);
    if (!probe) {
        PyErr_NoMemory();
        return -1;
    }
    if (sys_register(fd, IORING_REGISTER_PROBE, probe, 256) == 0) {
        r->probed = 1;
        for (unsigned i = 0; i < probe->ops_len && i < 256; i++)
            if (probe->ops[i].flags & IO_URING_OP_SUPPORTED)
                r->ops[probe->ops[i].op] = 1;
    }
    PyMem_Free(probe);

    /* wake(): an eventfd polled by the ring (see Ring.wake). */
    r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->efd < 0) {
        raise_errno_msg(errno, "eventfd failed: %s", strerror(errno));
        return -1;
    }
    r->wake_multishot = 1;
    arm_wake(r);
    if (flush_sq(r, 0) < 0)
        return -1;
    return 0;
}

static PyObject *Ring_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"entries", "flags", "cq_entries", "single_issuer", "register_fd",
                             NULL};
    unsigned entries = 256, flags = 0, cq_entries = 0;
    int single_issuer = 1, register_fd = 1;
    long long e_ll = 256, f_ll = 0, c_ll = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|L$LLpp:Ring", kwlist, &e_ll, &f_ll, &c_ll,
                                     &single_issuer, &register_fd))
        return NULL;
    if (e_ll < 1 || e_ll > UL_MAX_ENTRIES) {
        PyErr_Format(PyExc_ValueError,
                     "entries must be between 1 and %u (the kernel's IORING_MAX_ENTRIES), got "
                     "%lld",
                     UL_MAX_ENTRIES, e_ll);
        return NULL;
    }
    if (c_ll != 0 && (c_ll < e_ll || c_ll > 2 * (long long)UL_MAX_ENTRIES)) {
        PyErr_Format(PyExc_ValueError,
                     "cq_entries must be 0 (default: twice entries) or between entries (%lld) and "
                     "%u, got %lld",
                     e_ll, 2 * UL_MAX_ENTRIES, c_ll);
        return NULL;
    }
    const unsigned allowed = IORING_SETUP_CLAMP | IORING_SETUP_SUBMIT_ALL |
                             IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG |
                             IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    if (f_ll < 0 || f_ll > 0xFFFFFFFFLL || ((unsigned)f_ll & ~allowed)) {
        PyErr_Format(PyExc_ValueError,
                     "unsupported io_uring setup flags 0x%llx: this binding accepts only "
                     "SETUP_CLAMP, SETUP_SUBMIT_ALL, SETUP_COOP_TASKRUN, SETUP_TASKRUN_FLAG, "
                     "SETUP_SINGLE_ISSUER and SETUP_DEFER_TASKRUN (SQPOLL/IOPOLL/SQE128/CQE32 "
                     "change the ring layout or semantics it relies on)",
                     (unsigned long long)f_ll & ~(unsigned long long)allowed);
        return NULL;
    }
    entries = (unsigned)e_ll;
    flags = (unsigned)f_ll;
    cq_entries = (unsigned)c_ll;

    RingObject *r = (RingObject *)type->tp_alloc(type, 0);
    if (!r)
        return NULL;
    r->fd = -1;
    r->efd = -1;
    r->reg_index = -1;
    r->free_head = UL_NO_SLOT;
    r->owner = ul_gettid();
    r->fork_gen = ul_fork_gen;
    if (ring_setup(r, entries, flags, cq_entries, single_issuer) < 0) {
        r->closing = 1;
        ring_teardown(r);
        Py_DECREF(r);
        return NULL;
    }
    /* Only a single-issuer ring: every enter then comes from the owner, the one thread whose
     * table holds the registration. */
    if (register_fd && r->owner_only)
        r->reg_index = ring_register_fd(r);
    return (PyObject *)r;
}

static void Ring_finalize(PyObject *self)
{
    RingObject *r = (RingObject *)self;
    if (r->closed || r->closing)
        return;
    UL_EXC_SAVE;
    if (ring_close_impl(r, 1) < 0)
        PyErr_WriteUnraisable(self);
    UL_EXC_RESTORE;
}

static int Ring_traverse(RingObject *r, visitproc visit, void *arg)
{
    Py_VISIT(r->backlog);
    for (uint32_t i = 0; i < r->hwm; i++) {
        ul_slot *s = slot_at(r, i);
        if (s->state == SLOT_FREE)
            continue;
        Py_VISIT(s->ctx);
        Py_VISIT((PyObject *)s->bufring);
        if (s->ext && s->ext->has_buf)
            Py_VISIT(s->ext->buf.obj);
        if (s->msg)
            for (Py_ssize_t k = 0; k < s->msg->nbufs; k++)
                Py_VISIT(s->msg->bufs[k].obj);
    }
    return 0;
}

static int Ring_clear(RingObject *r)
{
    /* tp_finalize has closed the ring (GC runs finalizers first).  Buffers of leaked slots stay
     * pinned on purpose; only the ctx references and the backlog are cleared. */
    Py_CLEAR(r->backlog);
    if (r->closed && r->leaked) {
        for (uint32_t i = 0; i < r->hwm; i++)
            Py_CLEAR(slot_at(r, i)->ctx);
    }
    return 0;
}

static void Ring_dealloc(RingObject *r)
{
    if (PyObject_CallFinalizerFromDealloc((PyObject *)r) < 0)
        return; /* resurrected */
    PyObject_GC_UnTrack(r);
    if (!r->closed) {
        /* close() deferred teardown to a busy call that can no longer exist. */
        r->busy = 0;
        ring_teardown(r);
    }
    Ring_clear(r);
    if (r->weakreflist)
        PyObject_ClearWeakRefs((PyObject *)r);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

/* ---- op preparation ---------------------------------------------------------------------- */

/* What a prep_* call has gathered before it touches the ring. */
typedef struct {
    PyObject *ctx; /* borrowed */
    uint8_t sqe_flags;
    uint8_t has_buf, has_aux; /* either one makes op_commit give the slot an ext block */
    Py_buffer buf;
    ul_aux aux;
    ul_msg *msg;
    BufferRingObject *bufring; /* borrowed */
} ul_op;

static void op_release(ul_op *op)
{
    if (op->has_buf)
        PyBuffer_Release(&op->buf);
    op->has_buf = 0;
    if (op->msg) {
        for (Py_ssize_t k = 0; k < op->msg->nbufs; k++)
            PyBuffer_Release(&op->msg->bufs[k]);
        PyMem_Free(op->msg);
        op->msg = NULL;
    }
}

static int op_link_flags(ul_op *op, PyObject *link, PyObject *hardlink)
{
    int l = arg_bool(link, 0);
    if (l < 0)
        return -1;
    int h = arg_bool(hardlink, 0);
    if (h < 0)
        return -1;
    op->sqe_flags = (uint8_t)((l ? IOSQE_IO_LINK : 0) | (h ? IOSQE_IO_HARDLINK : 0));
    return 0;
}

/* Acquire a contiguous buffer and resolve [start, start+nbytes). */
static int op_buffer(ul_op *op, PyObject *obj, int writable, PyObject *start_o, PyObject *nbytes_o,
                     uint64_t *addr, uint32_t *len)
{
    if (PyObject_GetBuffer(obj, &op->buf, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0)
        return -1;
    op->has_buf = 1;
    long long start, nbytes;
    if (arg_long(start_o, 0, 0, op->buf.len, "start", &start) < 0)
        return -1;
    if (arg_long(nbytes_o, -1, -1, LLONG_MAX, "nbytes", &nbytes) < 0)
        return -1;
    long long avail = op->buf.len - start;
    if (nbytes < 0)
        nbytes = avail;
    if (nbytes > avail) {
        PyErr_Format(PyExc_ValueError, "start + nbytes (%lld) exceeds the buffer size (%zd)",
                     start + nbytes, op->buf.len);
        return -1;
    }
    if (nbytes > INT32_MAX)
        nbytes = INT32_MAX; /* res is a signed 32-bit count: larger transfers are short */
    *addr = (uint64_t)(uintptr_t)((char *)op->buf.buf + start);
    *len = (uint32_t)nbytes;
    return 0;
}

/* Take a slot and an SQE for op (its resources move into the slot).  May auto-submit when the
 * SQ is full.  On failure the op's resources are released and NULL returned. */
static struct ul_sqe *op_commit(RingObject *r, ul_op *op, uint8_t opcode, ul_slot **slot_out,
                                uint64_t *ud_out)
{
    if (ensure_sq_space(r) < 0)
        goto fail;
    /* Python code may have run (argument conversion, buffer export, the EBUSY path). */
    if (r->closing) {
        PyErr_SetString(PyExc_ValueError, "I/O operation on a closed ring");
        goto fail;
    }
    /* ---- critical section: pure C from here ---- */
    ul_ext *e = NULL;
    if (op->has_buf || op->has_aux) {
        e = ext_alloc(r);
        if (!e) {
            PyErr_SetString(PyExc_MemoryError, "io_uring ring: cannot allocate an op's side data");
            goto fail;
        }
    }
    uint32_t idx = slot_alloc(r);
    if (idx == UL_NO_SLOT) {
        if (e)
            ext_push_free(r, e);
        PyErr_SetString(PyExc_MemoryError, "io_uring ring: cannot allocate an op slot");
        goto fail;
    }
    ul_slot *s = slot_at(r, idx);
    Py_INCREF(op->ctx);
    s->ctx = op->ctx;
    s->state = SLOT_PENDING;
    s->opcode = opcode;
    s->quiet = 0;
    s->ext = e;
    if (e) {
        e->has_buf = op->has_buf;
        if (op->has_buf)
            e->buf = op->buf;
        if (op->has_aux)
            e->aux = op->aux;
    }
    s->msg = op->msg;
    s->bufring = op->bufring;
    if (op->bufring) {
        Py_INCREF(op->bufring);
        op->bufring->users++;
    }
    op->has_buf = 0;
    op->msg = NULL;
    r->inflight++;

    uint64_t ud = ((uint64_t)s->gen << 32) | idx;
    if (op->sqe_flags & (IOSQE_IO_LINK | IOSQE_IO_HARDLINK)) {
        if (!r->chain_open) {
            r->chain_open = 1;
            r->chain_start = r->sq_tail;
        }
    } else {
        r->chain_open = 0;
    }
    struct ul_sqe *sqe = sqe_next(r);
    sqe->opcode = opcode;
    sqe->flags = op->sqe_flags;
    sqe->user_data = ud;
    *slot_out = s;
    *ud_out = ud;
    return sqe;
fail:
    op_release(op);
    return NULL;
}

#define LINK_KW "link", "hardlink"

static ul_sig sig_nop = {"prep_nop", (const char *const[]){"ctx", LINK_KW, NULL}, 1, 1, NULL, 0};
static ul_sig sig_accept = {"prep_accept",
                            (const char *const[]){"fd", "ctx", "multishot", "flags", LINK_KW, NULL},
                            3, 2, NULL, 0};
static ul_sig sig_connect = {"prep_connect",
                             (const char *const[]){"fd", "sockaddr", "ctx", LINK_KW, NULL}, 3, 3,
                             NULL, 0};
static ul_sig sig_recv = {
    "prep_recv",
    (const char *const[]){"fd", "buffer", "ctx", "flags", "start", "nbytes", LINK_KW, NULL}, 4, 3,
    NULL, 0};
static ul_sig sig_recv_ms = {"prep_recv_multishot",
                             (const char *const[]){"fd", "bufring", "ctx", "flags", LINK_KW, NULL},
                             4, 3, NULL, 0};
static ul_sig sig_send = {
    "prep_send",
    (const char *const[]){"fd", "data", "ctx", "flags", "start", "nbytes", LINK_KW, "quiet",
                          NULL},
    4, 3, NULL, 0};
static ul_sig sig_sendmsg = {"prep_sendmsg",
                             (const char *const[]){"fd", "buffers", "ctx", "flags", LINK_KW, NULL},
                             4, 3, NULL, 0};
static ul_sig sig_read = {
    "prep_read",
    (const char *const[]){"fd", "buffer", "ctx", "offset", "start", "nbytes", LINK_KW, NULL}, 4, 3,
    NULL, 0};
static ul_sig sig_write = {
    "prep_write",
    (const char *const[]){"fd", "data", "ctx", "offset", "start", "nbytes", LINK_KW, NULL}, 4, 3,
    NULL, 0};
static ul_sig sig_poll = {"prep_poll_add",
                          (const char *const[]){"fd", "mask", "ctx", "multishot", LINK_KW, NULL},
                          4, 3, NULL, 0};
static ul_sig sig_shutdown = {"prep_shutdown",
                              (const char *const[]){"fd", "how", "ctx", LINK_KW, NULL}, 3, 3, NULL,
                              0};
static ul_sig sig_close = {"prep_close", (const char *const[]){"fd", "ctx", LINK_KW, NULL}, 2, 2,
                           NULL, 0};
static ul_sig sig_cancel = {"prep_cancel", (const char *const[]){"op_id", "ctx", LINK_KW, NULL},
                            2, 2, NULL, 0};
static ul_sig sig_cancel_fd = {"prep_cancel_fd",
                               (const char *const[]){"fd", "ctx", "all", LINK_KW, NULL}, 3, 2,
                               NULL, 0};
static ul_sig sig_timeout = {"prep_timeout",
                             (const char *const[]){"seconds", "ctx", "count", LINK_KW, NULL}, 3, 2,
                             NULL, 0};
static ul_sig sig_link_timeout = {"prep_link_timeout",
                                  (const char *const[]){"seconds", "ctx", LINK_KW, NULL}, 2, 2,
                                  NULL, 0};
static ul_sig sig_splice = {"prep_splice",
                            (const char *const[]){"fd_in", "off_in", "fd_out", "off_out", "nbytes",
                                                  "ctx", "flags", LINK_KW, NULL},
                            7, 6, NULL, 0};
static ul_sig sig_wait = {"wait",
                          (const char *const[]){"min_complete", "timeout", "max_complete", NULL},
                          3, 0, NULL, 0};
static ul_sig sig_reap = {"reap", (const char *const[]){"max_complete", NULL}, 1, 0, NULL, 0};
static ul_sig sig_dispatch = {
    "dispatch",
    (const char *const[]){"min_complete", "timeout", "method", "on_error", "until", NULL}, 5, 0,
    NULL, 0};

static ul_sig *all_sigs[] = {
    &sig_nop,     &sig_accept,   &sig_connect,   &sig_recv,    &sig_recv_ms,
    &sig_send,    &sig_sendmsg,  &sig_read,      &sig_write,   &sig_poll,
    &sig_shutdown, &sig_close,   &sig_cancel,    &sig_cancel_fd, &sig_timeout,
    &sig_link_timeout, &sig_splice, &sig_wait,   &sig_reap,    &sig_dispatch,
    NULL,
};

#define PREP_BEGIN(sig, N)                                                                     \
    PyObject *a[N];                                                                            \
    ul_op op;                                                                                  \
    memset(&op, 0, sizeof op);                                                                 \
    if (ring_check(r) < 0)                                                                     \
        return NULL;                                                                           \
    if (ul_parse((sig), args, nargs, kwnames, a) < 0)                                          \
        return NULL;

#define PREP_LINK(i)                                                                           \
    if (op_link_flags(&op, a[i], a[(i) + 1]) < 0)                                              \
        goto fail;

#define PREP_COMMIT(opcode)                                                                    \
    ul_slot *s;                                                                                \
    uint64_t ud;                                                                               \
    struct ul_sqe *sqe = op_commit(r, &op, (opcode), &s, &ud);                                 \
    if (!sqe)                                                                                  \
        return NULL;                                                                           \
    (void)s;

#define PREP_RETURN() return PyLong_FromUnsignedLongLong(ud);

#define PREP_FAIL()                                                                            \
    fail:                                                                                      \
    op_release(&op);                                                                           \
    return NULL;

static PyObject *Ring_prep_nop(RingObject *r, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames)
{
    PREP_BEGIN(&sig_nop, 3)
    op.ctx = a[0];
    PREP_LINK(1)
    {
        PREP_COMMIT(UL_OP_NOP)
        sqe->fd = -1;
        PREP_RETURN()
    }
    PREP_FAIL()
}

static PyObject *Ring_prep_accept(RingObject *r, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    PREP_BEGIN(&sig_accept, 6)
    int fd, multishot;
    long long flags;
    if (arg_fd(a[0], &fd) < 0)
        goto fail;
    op.ctx = a[1];
    if ((multishot = arg_bool(a[2], 0)) < 0)
        goto fail;
    if (arg_long(a[3], SOCK_NONBLOCK | SOCK_CLOEXEC, 0, UINT32_MAX, "flags", &flags) < 0)
        goto fail;
    PREP_LINK(4)
    {
        PREP_COMMIT(UL_OP_ACCEPT)
        sqe->fd = fd;
        sqe->op_flags = (uint32_t)flags;
        sqe->ioprio = multishot ? IORING_ACCEPT_MULTISHOT : 0;
        PREP_RETURN()
    }
    PREP_FAIL()
}

/* (host, port) or (host, port, flowinfo, scope_id) with a numeric host. */
static int parse_sockaddr(PyObject *o, ul_aux *aux, uint32_t *len)
{
    if (!PyTuple_Check(o) || PyTuple_GET_SIZE(o) < 2 || PyTuple_GET_SIZE(o) > 4) {
        PyErr_SetString(PyExc_TypeError,
                        "sockaddr must be a (host, port) or (host, port, flowinfo, scope_id) "
                        "tuple");
        return -1;
    }
    const char *host = PyUnicode_Check(PyTuple_GET_ITEM(o, 0))
                           ? PyUnicode_AsUTF8(PyTuple_GET_ITEM(o, 0))
                           : NULL;
    if (!host) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "sockaddr host must be a str");
        return -1;
    }
    long port = PyLong_AsLong(PyTuple_GET_ITEM(o, 1));
    if (port == -1 && PyErr_Occurred())
        return -1;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_OverflowError, "port must be 0-65535");
        return -1;
    }
    memset(aux, 0, sizeof *aux);
    if (PyTuple_GET_SIZE(o) == 2 && inet_pton(AF_INET, host, &aux->sin.sin_addr) == 1) {
        aux->sin.sin_family = AF_INET;
        aux->sin.sin_port = htons((uint16_t)port);
        *len = sizeof aux->sin;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &aux->sin6.sin6_addr) == 1) {
        aux->sin6.sin6_family = AF_INET6;
        aux->sin6.sin6_port = htons((uint16_t)port);
        if (PyTuple_GET_SIZE(o) >= 3) {
            unsigned long fi = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(o, 2));
            if (fi == (unsigned long)-1 && PyErr_Occurred())
                return -1;
            aux->sin6.sin6_flowinfo = htonl((uint32_t)fi);
        }
        if (PyTuple_GET_SIZE(o) == 4) {
            unsigned long sid = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(o, 3));
            if (sid == (unsigned long)-1 && PyErr_Occurred())
                return -1;
            aux->sin6.sin6_scope_id = (uint32_t)sid;
        }
        *len = sizeof aux->sin6;
        return 0;
    }
    PyErr_Format(PyExc_ValueError,
                 "sockaddr host %R is not a numeric IPv4/IPv6 address (resolve names first: "
                 "a prep call must never block on DNS)",
                 PyTuple_GET_ITEM(o, 0));
    return -1;
}

static PyObject *Ring_prep_connect(RingObject *r, PyObject *const *args, Py_ssize_t nargs,
                                   PyObject *kwnames)
{
    PREP_BEGIN(&sig_connect, 5)
    int fd;
    uint32_t alen;
    if (arg_fd(a[0], &fd) < 0 || parse_sockaddr(a[1], &op.aux, &alen) < 0)
        goto fail;
    op.has_aux = 1;
    op.ctx = a[2];
    PREP_LINK(3)
    {
        PREP_COMMIT(UL_OP_CONNECT)
        sqe->fd = fd;
        sqe->addr = (uint64_t)(uintptr_t)&s->ext->aux.sa; /* the kernel reads it from there */
        sqe->off = alen;
        PREP_RETURN()
    }
    PREP_FAIL()
}

static PyObject *Ring_prep_recv(RingObject *r, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    PREP_BEGIN(&sig_recv, 8)
    int fd;
    long long flags;
    uint64_t addr;
    uint32_t len;
    if (arg_fd(a[0], &fd) < 0)
        goto fail;
    op.ctx = a[2];
    if (arg_long(a[3], 0, INT32_MIN, UINT32_MAX, "flags", &flags) < 0)
        goto fail;
    if (op_buffer(&op, a[1], 1, a[4], a[5], &addr, &len) < 0)
        goto fail;
    PREP_LINK(6)
    {
        PREP_COMMIT(UL_OP_RECV)
        sqe->fd = fd;
        sqe->addr = addr;
        sqe->len = len;
        sqe->op_flags = (uint32_t)flags;
        PREP_RETURN()
    }
    PREP_FAIL()
}

static PyObject *Ring_prep_recv_multishot(RingObject *r, PyObject *const *args, Py_ssize_t nargs,
                                          PyObject *kwnames)
{
    PREP_BEGIN(&sig_recv_ms, 6)
    int fd;
    long long flags;
    if (arg_fd(a[0], &fd) < 0)
        goto fail;
    if (!PyObject_TypeCheck(a[1], &BufferRing_Type)) {
        PyErr_SetString(PyExc_TypeError, "bufring must be a BufferRing from ring.buffer_ring()");
        goto fail;
    }
    op.bufring = (BufferRingObject *)a[1];
    if (op.bufring->ring != r || !op.bufring->registered) {
        PyErr_SetString(PyExc_ValueError,
                        "bufring is not registered with this ring (closed, or another ring's)");
        goto fail;
    }
    op.ctx = a[2];
    if (arg_long(a[3], 0, INT32_MIN, UINT32_MAX, "flags", &flags) < 0)
        goto fail;
    PREP_LINK(4)
    op.sqe_flags |= IOSQE_BUFFER_SELECT;
    {
        uint16_t gid = op.bufring->gid;
        PREP_COMMIT(UL_OP_RECV)
        sqe->fd = fd;
        sqe->ioprio = IORING_RECV_MULTISHOT;
        sqe->buf_group = gid;
        sqe->op_flags = (uint32_t)flags;
        PREP_RETURN()
    }
    PREP_FAIL()
}

static PyObject *Ring_prep_send(RingObject *r, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    PREP_BEGIN(&sig_send, 9)
    int fd;
    long long flags;
    uint64_t addr;
    uint32_t len;
    if (arg_fd(a[0], &fd) < 0)
        goto fail;
    op.ctx = a[2];
    if (arg_long(a[3], MSG_NOSIGNAL, INT32_MIN, UINT32_MAX, "flags", &flags) < 0)
        goto fail;
    int quiet = arg_bool(a[8], 0);
    if (quiet < 0)
        goto fail;
    if (quiet && !(flags & MSG_WAITALL)) {
        /* A quiet send's completion may be handled late (see Ring_wait); only a send the kernel
         * finishes by itself (MSG_WAITALL: all of it or an error) can wait. */
        PyErr_SetString(PyExc_ValueError, "prep_send(quiet=True) needs MSG_WAITALL in flags");
        goto fail;
    }
    if (op_buffer(&op, a[1], 0, a[4], a[5], &addr, &len) < 0)
        goto fail;
    PREP_LINK(6)
    {
        PREP_COMMIT(UL_OP_SEND)
        s->quiet = (uint8_t)quiet;
        r->quiet_pending += (unsigned)quiet;
        sqe->fd = fd;
        sqe->addr = addr;
        sqe->len = len;
        sqe->op_flags = (uint32_t)flags;
        PREP_RETURN()
    }
    PREP_FAIL()
}

static PyObject *Ring_prep_sendmsg(RingObject *r, PyObject *const *args, Py_ssize_t nargs,
                                   PyObject *kwnames)
{
    PREP_BEGIN(&sig_sendmsg, 6)
    int fd;
    long long flags;
    PyObject *seq = NULL;
    if (arg_fd(a[0], &fd) < 0)
        goto fail;
    op.ctx = a[2];
    if (arg_long(a[3], MSG_NOSIGNAL, INT32_MIN, UINT32_MAX, "flags", &flags) < 0)
        goto fail;
    seq = PySequence_Fast(a[1], "buffers must be a sequence of bytes-like objects");
    if (!seq)
        goto fail;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 1 || n > UL_IOV_MAX) {
        PyErr_Format(PyExc_ValueError, "prep_sendmsg needs 1 to %d buffers, got %zd", UL_IOV_MAX,
                     n);
        goto fail_seq;
    }
    ul_msg *m = PyMem_Calloc(1, sizeof(ul_msg) + (size_t)n * (sizeof(Py_buffer) +
                                                              sizeof(struct iovec)));
    if (!m) {
        PyErr_NoMemory();
        goto fail_seq;
    }
    op.msg = m;
    m->iov = (struct iovec *)((char *)m + sizeof(ul_msg) + (size_t)n * sizeof(Py_buffer));
    for (Py_ssize_t k = 0; k < n; k++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, k), &m->bufs[k], PyBUF_SIMPLE) < 0)
            goto fail_seq;
        m->nbufs = k + 1;
        m->iov[k].iov_base = m->bufs[k].buf;
        m->iov[k].iov_len = (size_t)m->bufs[k].len;
    }
    m->msg.msg_iov = m->iov;
    m->msg.msg_iovlen = (size_t)n;
    Py_CLEAR(seq);
    PREP_LINK(4)
    {
        PREP_COMMIT(UL_OP_SENDMSG)
        sqe->fd = fd;
        sqe->addr = (uint64_t)(uintptr_t)&s->msg->msg;
        sqe->len = 1;
        sqe->op_flags = (uint32_t)flags;
        PREP_RETURN()
    }
fail_seq:
    Py_XDECREF(seq);
    PREP_FAIL()
}

static PyObject *prep_rw(RingObject *r, PyObject *const *args, Py_ssize_t nargs,
                         PyObject *kwnames, int is_read)
{
    PREP_BEGIN(is_read ? &sig_read : &sig_write, 8)
    int fd;
    long long off;
    uint64_t addr;
    uint32_t len;
    if (arg_fd(a[0], &fd) < 0)
        goto fail;
    op.ctx = a[2];
    if (arg_long(a[3], -1, -1, LLONG_MAX, "offset", &off) < 0)
        goto fail;
    if (op_buffer(&op, a[1], is_read, a[4], a[5], &addr, &len) < 0)
        goto fail;
    PREP_LINK(6)
    {
        PREP_COMMIT(is_read ? UL_OP_READ : UL_OP_WRITE)
        sqe->fd = fd;
        sqe->addr = addr;
        sqe->len = len;
        sqe->off = (uint64_t)off; /* -1: the file position (IORING_FEAT_RW_CUR_POS) */
        PREP_RETURN()
    }
    PREP_FAIL()
}

static PyObject *Ring_prep_read(RingObject *r, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    return prep_rw(r, args, nargs, kwnames, 1);
}

static PyObject *Ring_prep_write(RingObject *r, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    return prep_rw(r, args, nargs, kwnames, 0);
}

static PyObject *Ring_prep_poll_add(RingObject *r, PyObject *const *args, Py_ssize_t nargs,
                                    PyObject *kwnames)
{
    PREP_BEGIN(&sig_poll, 6)
    int fd, multishot;
    long long mask;
    if (arg_fd(a[0], &fd) < 0)
        goto fail;
    if (arg_long(a[1], 0, 0, UINT32_MAX, "mask", &mask) < 0)
        goto fail;
    op.ctx = a[2];
    if ((multishot = arg_bool(a[3], 0)) < 0)
        goto fail;
    PREP_LINK(4)
    {
        PREP_COMMIT(UL_OP_POLL_ADD)
        uint32_t m = (uint32_t)mask;
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        m = (m << 16) | (m >> 16); /* poll32_events is stored word-swapped on big endian */
#endif
        sqe->fd = fd;
        sqe->op_flags = m;
        sqe->len = multishot ? IORING_POLL_ADD_MULTI : 0;
        PREP_RETURN()
    }
    PREP_FAIL()
}

static PyObject *Ring_prep_shutdown(RingObject *r, PyObject *const *args, Py_ssize_t nargs,
                                    PyObject *kwnames)
{
    PREP_BEGIN(&sig_shutdown, 5)
    int fd;
    long long how;
    if (arg_fd(a[0], &fd) < 0)
        goto fail;
    if (arg_long(a[1], 0, 0, 2, "how", &how) < 0)
        goto fail;
    op.ctx = a[2];
    PREP_LINK(3)
    {
        PREP_COMMIT(UL_OP_SHUTDOWN)
        sqe->fd = fd;
        sqe->len = (uint32_t)how;
        PREP_RETURN()
    }
    PREP_FAIL()
}

static PyObject *Ring_prep_close(RingObject *r, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    PREP_BEGIN(&sig_close, 4)
    int fd;
    if (arg_fd(a[0], &fd) < 0)
        goto fail;
    op.ctx = a[1];
    PREP_LINK(2)
    {
        PREP_COMMIT(UL_OP_CLOSE)
        sqe->fd = fd;
        PREP_RETURN()
    }
    PREP_FAIL()
}

static PyObject *Ring_prep_cancel(RingObject *r, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    PREP_BEGIN(&sig_cancel, 4)
    unsigned long long target = PyLong_AsUnsignedLongLong(a[0]);
    if (target == (unsigned long long)-1 && PyErr_Occurred())
        goto fail;
    if ((uint32_t)target == UL_INTERNAL_IDX) {
        PyErr_SetString(PyExc_ValueError, "not an op id returned by a prep_* call");
        goto fail;
    }
    op.ctx = a[1];
    PREP_LINK(2)
    {
        PREP_COMMIT(UL_OP_ASYNC_CANCEL)
        sqe->fd = -1;
        sqe->addr = target; /* full 64 bits: a stale id (older generation) matches nothing */
        PREP_RETURN()
    }
    PREP_FAIL()
}

static PyObject *Ring_prep_cancel_fd(RingObject *r, PyObject *const *args, Py_ssize_t nargs,
                                     PyObject *kwnames)
{
    PREP_BEGIN(&sig_cancel_fd, 5)
    int fd, all;
    if (arg_fd(a[0], &fd) < 0)
        goto fail;
    op.ctx = a[1];
    if ((all = arg_bool(a[2], 1)) < 0)
        goto fail;
    PREP_LINK(3)
    {
        PREP_COMMIT(UL_OP_ASYNC_CANCEL)
        sqe->fd = fd;
        sqe->op_flags = IORING_ASYNC_CANCEL_FD | (all ? IORING_ASYNC_CANCEL_ALL : 0);
        PREP_RETURN()
    }
    PREP_FAIL()
}

static PyObject *Ring_prep_timeout(RingObject *r, PyObject *const *args, Py_ssize_t nargs,
                                   PyObject *kwnames)
{
    PREP_BEGIN(&sig_timeout, 5)
    struct ul_ts ts;
    long long count;
    if (arg_seconds(a[0], &ts) < 0)
        goto fail;
    op.aux.ts = ts;
    op.has_aux = 1;
    op.ctx = a[1];
    if (arg_long(a[2], 0, 0, UINT32_MAX, "count", &count) < 0)
        goto fail;
    PREP_LINK(3)
    {
        PREP_COMMIT(UL_OP_TIMEOUT)
        sqe->fd = -1;
        sqe->addr = (uint64_t)(uintptr_t)&s->ext->aux.ts;
        sqe->len = 1;
        sqe->off = (uint64_t)count;
        PREP_RETURN()
    }
    PREP_FAIL()
}

static PyObject *Ring_prep_link_timeout(RingObject *r, PyObject *const *args, Py_ssize_t nargs,
                                        PyObject *kwnames)
{
    PREP_BEGIN(&sig_link_timeout, 4)
    struct ul_ts ts;
    if (arg_seconds(a[0], &ts) < 0)
        goto fail;
    op.aux.ts = ts;
    op.has_aux = 1;
    op.ctx = a[1];
    PREP_LINK(2)
    if (!r->chain_open) {
        PyErr_SetString(PyExc_ValueError,
                        "prep_link_timeout must directly follow an op prepared with link=True "
                        "(it bounds that op)");
        goto fail;
    }
    {
        PREP_COMMIT(UL_OP_LINK_TIMEOUT)
        sqe->fd = -1;
        sqe->addr = (uint64_t)(uintptr_t)&s->ext->aux.ts;
        sqe->len = 1;
        PREP_RETURN()
    }
    PREP_FAIL()
}

static PyObject *Ring_prep_splice(RingObject *r, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    PREP_BEGIN(&sig_splice, 9)
    int fd_in, fd_out;
    long long off_in, off_out, nbytes, flags;
    if (arg_fd(a[0], &fd_in) < 0)
        goto fail;
    if (arg_long(a[1], -1, -1, LLONG_MAX, "off_in", &off_in) < 0)
        goto fail;
    if (arg_fd(a[2], &fd_out) < 0)
        goto fail;
    if (arg_long(a[3], -1, -1, LLONG_MAX, "off_out", &off_out) < 0)
        goto fail;
    if (arg_long(a[4], 0, 0, INT32_MAX, "nbytes", &nbytes) < 0)
        goto fail;
    op.ctx = a[5];
    if (arg_long(a[6], 0, 0, UINT32_MAX, "flags", &flags) < 0)
        goto fail;
    PREP_LINK(7)
    {
        PREP_COMMIT(UL_OP_SPLICE)
        sqe->fd = fd_out;
        sqe->off = (uint64_t)off_out; /* -1: no offset (pipe, socket, or file position) */
        sqe->addr = (uint64_t)off_in;
        sqe->splice_fd_in = fd_in;
        sqe->len = (uint32_t)nbytes;
        sqe->op_flags = (uint32_t)flags;
        PREP_RETURN()
    }
    PREP_FAIL()
}

/* ---- submit / wait / reap ---------------------------------------------------------------- */

/* Completion work is parked for this thread (COOP/DEFER_TASKRUN): the kernel raises
 * IORING_SQ_TASKRUN when TASKRUN_FLAG is set; without the flag we cannot tell. */
static inline int taskrun_needed(RingObject *r)
{
    return r->taskrun_always ||
           (r->taskrun_flag &&
            (__atomic_load_n(r->sq_kflags, __ATOMIC_ACQUIRE) & IORING_SQ_TASKRUN));
}

static PyObject *Ring_submit(RingObject *r, PyObject *noargs)
{
    (void)noargs;
    if (ring_check(r) < 0)
        return NULL;
    int total = 0;
    while (sq_unsubmitted(r) > 0) {
        int n = flush_sq(r, 0);
        if (n < 0)
            return NULL;
        if (n == 0 || r->closing)
            break;
        total += n;
    }
    return PyLong_FromLong(total);
}

/* ---- RecvContext: a multishot receive's bytes delivered without a Python frame ------------ */

typedef struct {
    PyObject_HEAD
    PyObject *conn;  /* its _on_data(bytes) receives the data (and _on_sent(n): SendContext) */
    Py_ssize_t ops;  /* the driver's count of ops in flight on the socket */
    int fd;          /* the socket */
    char closing;    /* set by the driver: every completion goes to the ctx's method */
} RecvContextObject;

static PyTypeObject RecvContext_Type;
static void br_release(struct BufferRingObject *b, uint32_t bid, uint32_t nbytes, int more);
static PyObject *s_on_data; /* "_on_data", interned at import */

static int RecvContext_traverse(RecvContextObject *o, visitproc visit, void *arg)
{
    Py_VISIT(o->conn);
    return 0;
}

static int RecvContext_clear(RecvContextObject *o)
{
    Py_CLEAR(o->conn);
    return 0;
}

/* A Python subclass's instances come here through subtype_dealloc, which drops the reference
 * to their (heap) type itself: this static type must not. */
static void RecvContext_dealloc(RecvContextObject *o)
{
    PyObject_GC_UnTrack(o);
    Py_CLEAR(o->conn);
    Py_TYPE(o)->tp_free((PyObject *)o);
}

static PyMemberDef RecvContext_members[] = {
    {"conn", T_OBJECT, offsetof(RecvContextObject, conn), 0,
     "whose _on_data(bytes) dispatch() calls with a multishot receive's data (None: unset)"},
    {"fd", T_INT, offsetof(RecvContextObject, fd), 0,
     "the connection's socket (a SendContext's resubmitted sends go to it)"},
    {"ops", T_PYSSIZET, offsetof(RecvContextObject, ops), 0,
     "ops in flight on the socket, as the driver counts them; dispatch()'s send fast path "
     "takes one off for the send it completes and adds one for the send it submits"},
    {"closing", T_BOOL, offsetof(RecvContextObject, closing), 0,
     "True: the driver is closing the connection; its SendContext's completions all go to "
     "the method"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject RecvContext_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ioladder.kernel._uring.RecvContext",
    .tp_basicsize = sizeof(RecvContextObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "RecvContext() -- base class for the ctx of a multishot receive on a buffer ring.\n\n"
              "Ring.dispatch() delivers the steady-state completions of such an op itself: one with "
              "res > 0, CQE_F_BUFFER and CQE_F_MORE becomes conn._on_data(bytes) (the bytes copied "
              "out of the buffer, which is released at once) with no Python frame and no int "
              "objects. That is exactly what the ctx's own method must do with such a completion, "
              "because every other completion -- the one ending the op (no CQE_F_MORE, possibly "
              "carrying bytes), errors, and any completion that wait()/reap() return or that "
              "dispatch() takes from the backlog -- goes to the method as usual.",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)RecvContext_dealloc,
    .tp_traverse = (traverseproc)RecvContext_traverse,
    .tp_clear = (inquiry)RecvContext_clear,
    .tp_members = RecvContext_members,
};

/* PyObject_TypeCheck(o, base) with the last subclass that passed remembered in *last (a
 * strong reference, so the pointer stays that type): no MRO walk per completion for the one
 * class a driver uses. A subclass of a C context type stays one: its C layout pins the base. */
static inline int is_ctx_type(PyObject *o, PyTypeObject *base, PyTypeObject **last)
{
    PyTypeObject *tp = Py_TYPE(o);
    if (tp == *last || tp == base)
        return 1;
    if (!PyType_IsSubtype(tp, base))
        return 0;
    Py_XSETREF(*last, (PyTypeObject *)Py_NewRef(tp));
    return 1;
}

static PyTypeObject *recv_ctx_last;
static inline int is_recv_context(PyObject *ctx)
{
    return is_ctx_type(ctx, &RecvContext_Type, &recv_ctx_last);
}

/* dispatch()'s fast path for a RecvContext: 1 delivered (or raised: -1), 0 not applicable. */
static inline int recv_fast(RingObject *r, ul_done *d, PyObject *ctx, PyObject **data_conn)
{
    (void)r;
    struct BufferRingObject *b = d->bufring;
    uint32_t bid = d->flags >> IORING_CQE_BUFFER_SHIFT;
    if (bid >= b->count || !b->refs[bid] || (uint32_t)d->res > b->size - b->off[bid])
        return 0; /* not ours to handle: the method sees it (and raises, as take() would) */
    PyObject *conn = ((RecvContextObject *)ctx)->conn;
    PyObject *data = PyBytes_FromStringAndSize(br_addr(b, bid) + b->off[bid], d->res);
    if (!data)
        return -1;
    br_release(b, bid, (uint32_t)d->res, b->inc && (d->flags & IORING_CQE_F_BUF_MORE));
    *data_conn = conn ? conn : Py_None;
    Py_INCREF(*data_conn);
    static mcache on_data_cache;
    PyObject *ret = mcache_call1(&on_data_cache, *data_conn, s_on_data, data);
    Py_DECREF(data);
    Py_DECREF(*data_conn);
    *data_conn = NULL;
    if (!ret)
        return -1;
    Py_DECREF(ret);
    return 1;
}

/* ---- SendContext: a connection's sends completed and continued without a Python frame ---- */

typedef struct {
    PyObject_HEAD
    PyObject *st; /* the connection's RecvContext: conn, fd, ops, closing */
} SendContextObject;

static PyTypeObject SendContext_Type;
static PyObject *s_on_sent, *s_next_chunk, *s_send_chunk; /* interned at import */

static int SendContext_traverse(SendContextObject *o, visitproc visit, void *arg)
{
    Py_VISIT(o->st);
    return 0;
}

static int SendContext_clear(SendContextObject *o)
{
    Py_CLEAR(o->st);
    return 0;
}

static void SendContext_dealloc(SendContextObject *o)
{
    PyObject_GC_UnTrack(o);
    Py_CLEAR(o->st);
    Py_TYPE(o)->tp_free((PyObject *)o);
}

static PyMemberDef SendContext_members[] = {
    {"st", T_OBJECT, offsetof(SendContextObject, st), 0,
     "the connection's RecvContext (its conn, fd, ops and closing), or None"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject SendContext_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ioladder.kernel._uring.SendContext",
    .tp_basicsize = sizeof(SendContextObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "SendContext() -- base class for the ctx of a stream connection's SENDs.\n\n"
              "st is the connection's RecvContext. While st.closing is false, Ring.dispatch() "
              "handles a send's successful completion itself: st.ops -= 1, then "
              "st.conn._on_sent(res); if that returns True, the next chunk, "
              "st.conn._next_chunk(), is sent from C (st.ops += 1) when it is a buffer, or "
              "handed to ctx._send_chunk(chunk) when it is not. Every other completion (an "
              "error, no bytes, st.closing set) goes to the ctx's method, which must do the "
              "same with a successful one. The ring's send gate starts a transport's sends "
              "the same way (_sendgate.h).",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)SendContext_dealloc,
    .tp_traverse = (traverseproc)SendContext_traverse,
    .tp_clear = (inquiry)SendContext_clear,
    .tp_members = SendContext_members,
};

static PyTypeObject *send_ctx_last;
static inline int is_send_context(PyObject *ctx)
{
    return is_ctx_type(ctx, &SendContext_Type, &send_ctx_last);
}

/* The RecvContext behind a SendContext whose sends C may handle, or NULL (then Python does). */
static inline RecvContextObject *send_owner(PyObject *ctx)
{
    PyObject *st = ((SendContextObject *)ctx)->st;
    if (!st || !is_recv_context(st))
        return NULL;
    RecvContextObject *o = (RecvContextObject *)st;
    return o->closing || !o->conn || o->fd < 0 ? NULL : o;
}

/* prep_send(fd, chunk, ctx) from C: 0, or -1 with an exception set. */
static int send_submit(RingObject *r, int fd, PyObject *chunk, PyObject *ctx)
{
    ul_op op;
    memset(&op, 0, sizeof op);
    op.ctx = ctx;
    uint64_t addr, ud;
    uint32_t len;
    ul_slot *s;
    if (op_buffer(&op, chunk, 0, NULL, NULL, &addr, &len) < 0) {
        op_release(&op);
        return -1;
    }
    struct ul_sqe *sqe = op_commit(r, &op, UL_OP_SEND, &s, &ud);
    if (!sqe)
        return -1;
    sqe->fd = fd;
    sqe->addr = addr;
    sqe->len = len;
    sqe->op_flags = MSG_NOSIGNAL;
    return 0;
}

/* Send the transport's next chunk for st: from C when it is a buffer, else ctx._send_chunk(). */
static int send_next(RingObject *r, RecvContextObject *st, PyObject *ctx, PyObject *conn)
{
    PyObject *chunk = PyObject_CallMethodNoArgs(conn, s_next_chunk);
    if (!chunk)
        return -1;
    int rc;
    if (PyObject_CheckBuffer(chunk)) {
        rc = send_submit(r, st->fd, chunk, ctx);
        if (rc == 0)
            st->ops++;
    } else {
        PyObject *ret = PyObject_CallMethodOneArg(ctx, s_send_chunk, chunk);
        rc = ret ? 0 : -1;
        Py_XDECREF(ret);
    }
    Py_DECREF(chunk);
    return rc;
}

/* dispatch()'s fast path for a SendContext's final, successful completion: 1 handled (or
 * raised: -1), 0 not applicable (the method gets it). */
static inline int send_fast(RingObject *r, ul_done *d, PyObject *ctx)
{
    RecvContextObject *st = send_owner(ctx);
    if (!st)
        return 0;
    slot_finish(r, d->idx); /* the sent buffer released, as before any callback */
    Py_INCREF(st);
    PyObject *conn = Py_NewRef(st->conn);
    st->ops--;
    int rc = -1;
    PyObject *n = PyLong_FromLong(d->res);
    if (n) {
        static mcache on_sent_cache;
        PyObject *more = mcache_call1(&on_sent_cache, conn, s_on_sent, n);
        Py_DECREF(n);
        if (more) {
            rc = 0;
            if (more == Py_True && !st->closing)
                rc = send_next(r, st, ctx, conn);
            Py_DECREF(more);
        }
    }
    Py_DECREF(conn);
    Py_DECREF(st);
    return rc < 0 ? -1 : 1;
}

/* ---- dispatch: completions delivered by calling their ctx, no tuples ---------------------- */

/* Where the completions of a wait loop go: appended to a list as (ctx, res, flags) tuples
 * (wait()), or delivered at once by calling ctx.<method>(res, flags) / ctx(res, flags)
 * (dispatch()). */
typedef struct {
    PyObject *list;   /* wait(): the result list; NULL for dispatch() */
    PyObject *method; /* dispatch(): interned method name, or NULL to call ctx itself */
    PyObject *on_error; /* dispatch(): on_error(exc, ctx) for an Exception, or NULL: stop */
    Py_ssize_t have;  /* completions collected (wait) or delivered (dispatch) so far */
    int woken;        /* the last wait loop ended on wake() */
} ul_sink;

/* dispatch() frames active on this thread (a stack on the C stack), for the re-entry check. */
typedef struct ul_dframe {
    RingObject *r;
    struct ul_dframe *prev;
} ul_dframe;
static _Thread_local ul_dframe *ul_tls_dispatch;

/* wait()/reap()/dispatch() called from inside a dispatch() callback of the same ring, on the same
 * thread: refused, because the outer call still holds reaped completions that must be delivered
 * first (a nested reap would deliver later ones ahead of them). */
static int check_not_dispatching(RingObject *r, const char *what)
{
    for (ul_dframe *f = ul_tls_dispatch; f; f = f->prev) {
        if (f->r == r) {
            PyErr_Format(PyExc_RuntimeError,
                         "%s() called from a dispatch() callback of the same ring: the "
                         "completions already reaped would be delivered out of order (prepare "
                         "ops or submit() from a callback; reap on the next pass)",
                         what);
            return -1;
        }
    }
    return 0;
}

/* One callback: ctx.<method>(res, flags), or ctx(res, flags) when method is NULL. */
static inline int call_ctx(PyObject *ctx, PyObject *method, PyObject *res, PyObject *fl)
{
    PyObject *a[4] = {NULL, ctx, res, fl};
    PyObject *ret;
    if (method)
        ret = PyObject_VectorcallMethod(method, a + 1, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    else
        ret = PyObject_Vectorcall(ctx, a + 2, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (!ret)
        return -1;
    Py_DECREF(ret);
    return 0;
}

/* A callback raised.  With on_error and an Exception (not a bare BaseException such as
 * KeyboardInterrupt or SystemExit): on_error(exc, ctx), and 0 to carry on; else -1, error set. */
static int callback_failed(ul_sink *k, PyObject *ctx)
{
    if (!k->on_error || !PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb && value)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    if (!value)
        return -1;
    PyObject *ret = PyObject_CallFunctionObjArgs(k->on_error, value, ctx, NULL);
    Py_DECREF(value);
    if (!ret)
        return -1;
    Py_DECREF(ret);
    return 0;
}

/* Completions that were reaped but not delivered because a callback raised: back to the front
 * of the backlog, as tuples, for the next wait()/reap()/dispatch().  The error stays set. */
static void stash_undelivered(RingObject *r, ul_done *d, int n)
{
    if (n <= 0)
        return;
    UL_EXC_SAVE;
    PyObject *list = PyList_New(0);
    if (!list || deliver(r, d, n, list) < 0) {
        /* Out of memory: deliver() released what it could not keep; nothing else to do. */
        if (!list)
            discard(r, d, n);
        PyErr_Clear();
    }
    UL_EXC_RESTORE;
    if (list) {
        restore_backlog(r, list);
        Py_DECREF(list);
    }
}

/* dispatch(): deliver the backlog left by an earlier call (tuples) first. */
static int dispatch_backlog(RingObject *r, ul_sink *k)
{
    PyObject *bl = r->backlog;
    if (!bl || PyList_GET_SIZE(bl) == 0)
        return 0;
    r->backlog = NULL;
    Py_ssize_t n = PyList_GET_SIZE(bl);
    r->batch = n;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyList_GET_ITEM(bl, i);
        k->have++;
        PyObject *ctx = PyTuple_GET_ITEM(t, 0);
        if (call_ctx(ctx, k->method, PyTuple_GET_ITEM(t, 1), PyTuple_GET_ITEM(t, 2)) < 0 &&
            callback_failed(k, ctx) < 0) {
            PyObject *rest = PyList_GetSlice(bl, i + 1, n);
            if (rest) {
                restore_backlog(r, rest);
                Py_DECREF(rest);
            }
            Py_DECREF(bl);
            return -1;
        }
    }
    Py_DECREF(bl);
    return 0;
}

/* dispatch(): reap everything available, chunk by chunk, calling each ctx in CQ order. */
static int harvest_dispatch(RingObject *r, ul_sink *k, int *woken)
{
    for (;;) {
        ul_done d[UL_REAP_CHUNK];
        int n = harvest(r, d, UL_REAP_CHUNK, woken);
        if (n == 0)
            return 0;
        /* The batch: what this call delivered so far, this chunk, and what is still in the CQ. */
        r->batch = k->have + n + (Py_ssize_t)(load_acq(r->cq_ktail) - *r->cq_khead);
        for (int i = 0; i < n; i++) {
            PyObject *ctx = d[i].ctx;
            d[i].ctx = NULL;
            int rc = -1, fast = 0;
            if (d[i].bufring && !d[i].final && d[i].res > 0 && !r->closing &&
                is_recv_context(ctx)) {
                /* A multishot receive's bytes (CQE_F_MORE: its slot, and so its buffer ring,
                 * stays alive): conn._on_data(bytes), no Python frame in between. */
                PyObject *tmp = NULL;
                fast = recv_fast(r, &d[i], ctx, &tmp);
                rc = fast < 0 ? -1 : 0;
            } else if (d[i].final && d[i].res > 0 && !r->closing && is_send_context(ctx)) {
                fast = send_fast(r, &d[i], ctx);
                rc = fast < 0 ? -1 : 0;
            }
            if (!fast) {
                if (d[i].final)
                    slot_finish(r, d[i].idx); /* buffers released before the callback */
                PyObject *res = PyLong_FromLong(d[i].res);
                PyObject *fl = res ? PyLong_FromUnsignedLong(d[i].flags) : NULL;
                if (fl)
                    rc = call_ctx(ctx, k->method, res, fl);
                Py_XDECREF(res);
                Py_XDECREF(fl);
            }
            if (rc < 0)
                rc = callback_failed(k, ctx);
            Py_DECREF(ctx);
            k->have++;
            if (rc < 0) {
                stash_undelivered(r, d + i + 1, n - i - 1);
                return -1;
            }
        }
        if (n < UL_REAP_CHUNK || r->closing)
            return 0;
    }
}

static inline int sink_reap(RingObject *r, ul_sink *k, Py_ssize_t max, int *woken)
{
    if (k->list) {
        int rc = harvest_into(r, k->list, max, woken);
        k->have = PyList_GET_SIZE(k->list);
        return rc;
    }
    return harvest_dispatch(r, k, woken);
}

/* The loop of wait() and dispatch(): submit, block (GIL released) until min_complete, reap into
 * the sink.  Caller is counted in busy; k->have holds what the backlog already gave. */
static int wait_loop(RingObject *r, ul_sink *k, long long min_complete, long long max_complete,
                     int has_timeout, long long deadline)
{
    int woken = 0, entered = 0, timed_out = 0;
    /* Quiet completions (prep_send(quiet=True)) posted while we submit -- a send the kernel
     * finished inline -- do not count toward min_complete: they come back with the next real
     * completion instead of costing a pass of their own. Counted are: the backlog, every
     * non-quiet completion, and every completion reaped after an enter that submitted nothing
     * (so a quiet send that finishes later, say once the peer read, still ends the wait). */
    Py_ssize_t counted = k->have;
    int after_wait = 0;
    for (;;) {
        Py_ssize_t before = k->have;
        r->loud = 0;
        if (sink_reap(r, k, (Py_ssize_t)max_complete, &woken) < 0)
            return -1;
        counted += after_wait ? k->have - before : r->loud;
        if (r->closing)
            break;
        Py_ssize_t have = k->have;
        if ((max_complete > 0 && have >= max_complete) || woken || timed_out)
            break;
        unsigned pending = sq_unsubmitted(r);
        /* Satisfied: return -- after one enter if there is anything to submit or completion
         * work parked for us (DEFER/COOP_TASKRUN), so wait(0) is a true non-blocking poll. */
        if (counted >= min_complete && (entered || (pending == 0 && !taskrun_needed(r))))
            break;
        unsigned need = counted >= min_complete ? 0 : (unsigned)(min_complete - counted);
        if (need > 0 && pending > 0 && r->quiet_pending > 0)
            need = 0; /* submit first, reap what finished inline, then wait for the rest */
        if (pending > 0)
            r->quiet_pending = 0;
        after_wait = need > 0 && pending == 0;
        struct ul_ts ts;
        struct ul_getevents_arg arg;
        unsigned flags = IORING_ENTER_GETEVENTS;
        if (has_timeout && need > 0) {
            long long left = deadline - now_ns();
            if (left <= 0) {
                if (entered)
                    break;
                need = 0; /* one non-blocking pass: submit, run task work, reap */
            } else {
                ts.tv_sec = left / 1000000000LL;
                ts.tv_nsec = left % 1000000000LL;
                memset(&arg, 0, sizeof arg);
                arg.ts = (uint64_t)(uintptr_t)&ts;
                flags |= IORING_ENTER_EXT_ARG;
            }
        }
        if (need > 0)
            arm_wake(r);
        pending = sq_unsubmitted(r);
        store_rel(r->sq_ktail, r->sq_tail);
        int ret, err;
        if (need > 0) {
            Py_BEGIN_ALLOW_THREADS
            ret = ring_enter(r, pending, need, flags,
                             (flags & IORING_ENTER_EXT_ARG) ? &arg : NULL,
                             (flags & IORING_ENTER_EXT_ARG) ? sizeof arg : 0);
            err = errno;
            Py_END_ALLOW_THREADS
        } else {
            ret = ring_enter(r, pending, 0, flags, NULL, 0);
            err = errno;
        }
        entered = 1;
        if (ret >= 0) {
            if ((unsigned)ret >= pending)
                r->chain_open = 0;
            continue;
        }
        if (r->closing)
            break;
        if (err == ETIME) {
            timed_out = 1;
            continue; /* reap what arrived, then return */
        }
        if (err == EINTR) {
            if (k->have > 0)
                timed_out = 1; /* return what we have; the handler runs right after */
            else if (PyErr_CheckSignals() < 0)
                return -1;
            continue;
        }
        if (err == EAGAIN || err == EBUSY) {
            /* Submission refused for now (CQ overflow backlog / request allocation): the
             * harvest at the top of the loop frees CQ space; pause briefly to avoid spinning. */
            Py_BEGIN_ALLOW_THREADS
            usleep(200);
            Py_END_ALLOW_THREADS
            continue;
        }
        raise_enter_error(err);
        return -1;
    }
    k->woken = woken;
    return 0;
}

/* The arguments wait() and dispatch() share. */
static int parse_wait_args(PyObject *min_o, PyObject *timeout_o, long long *min_complete,
                           int *has_timeout, long long *deadline)
{
    if (arg_long(min_o, 1, 0, INT32_MAX, "min_complete", min_complete) < 0)
        return -1;
    *has_timeout = timeout_o && timeout_o != Py_None;
    *deadline = 0;
    if (*has_timeout) {
        double t = PyFloat_AsDouble(timeout_o);
        if (t == -1.0 && PyErr_Occurred())
            return -1;
        if (!(t >= 0.0) || t > 1e9) {
            PyErr_SetString(PyExc_ValueError, "timeout must be None or a number >= 0");
            return -1;
        }
        *deadline = now_ns() + (long long)(t * 1e9);
    }
    return 0;
}

static PyObject *Ring_wait(RingObject *r, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames)
{
    PyObject *a[3];
    if (ring_check(r) < 0 || check_not_dispatching(r, "wait") < 0)
        return NULL;
    if (ul_parse(&sig_wait, args, nargs, kwnames, a) < 0)
        return NULL;
    long long min_complete, max_complete, deadline;
    int has_timeout;
    if (parse_wait_args(a[0], a[1], &min_complete, &has_timeout, &deadline) < 0)
        return NULL;
    if (arg_long(a[2], 0, 0, PY_SSIZE_T_MAX, "max_complete", &max_complete) < 0)
        return NULL;
    if (max_complete > 0 && min_complete > max_complete)
        min_complete = max_complete;

    PyObject *results = take_backlog(r, (Py_ssize_t)max_complete);
    if (!results)
        return NULL;
    busy_enter(r);
    ul_sink k = {results, NULL, NULL, PyList_GET_SIZE(results)};
    if (wait_loop(r, &k, min_complete, max_complete, has_timeout, deadline) < 0) {
        restore_backlog(r, results);
        Py_DECREF(results);
        busy_exit(r);
        return NULL;
    }
    busy_exit(r);
    return results;
}

static PyObject *Ring_dispatch(RingObject *r, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames)
{
    PyObject *a[5];
    if (ring_check(r) < 0 || check_not_dispatching(r, "dispatch") < 0)
        return NULL;
    if (ul_parse(&sig_dispatch, args, nargs, kwnames, a) < 0)
        return NULL;
    long long min_complete, deadline;
    int has_timeout;
    if (parse_wait_args(a[0], a[1], &min_complete, &has_timeout, &deadline) < 0)
        return NULL;
    PyObject *method = a[2] && a[2] != Py_None ? a[2] : NULL;
    if (method && !PyUnicode_Check(method)) {
        PyErr_SetString(PyExc_TypeError, "method must be None or a str");
        return NULL;
    }
    PyObject *on_error = a[3] && a[3] != Py_None ? a[3] : NULL;
    if (on_error && !PyCallable_Check(on_error)) {
        PyErr_SetString(PyExc_TypeError, "on_error must be None or callable");
        return NULL;
    }
    PyObject *until = a[4] && a[4] != Py_None ? a[4] : NULL;
    if (until && !PyTuple_Check(until)) {
        PyErr_SetString(PyExc_TypeError, "until must be None or a tuple of containers");
        return NULL;
    }
    if (until && min_complete < 1) {
        PyErr_SetString(PyExc_ValueError, "until needs min_complete >= 1 (passes that never "
                                          "wait would spin)");
        return NULL;
    }
    Py_XINCREF(method);
    Py_XINCREF(on_error);
    Py_XINCREF(until);
    ul_sink k = {NULL, method, on_error, 0, 0};
    ul_dframe frame = {r, ul_tls_dispatch};
    ul_tls_dispatch = &frame;
    busy_enter(r);
    int rc = dispatch_backlog(r, &k);
    Py_ssize_t total = 0;
    while (rc == 0) {
        rc = wait_loop(r, &k, min_complete, 0, has_timeout, deadline);
        total += k.have;
        k.have = 0; /* each pass waits for min_complete of its own */
        /* until: pass after pass, as long as nothing asks for the caller (see the doc). */
        if (rc < 0 || !until || k.woken || r->closing || r->closed ||
            (has_timeout && now_ns() >= deadline))
            break;
        for (Py_ssize_t i = 0; rc == 0 && i < PyTuple_GET_SIZE(until); i++) {
            int t = PyObject_IsTrue(PyTuple_GET_ITEM(until, i));
            rc = t < 0 ? -1 : t ? 1 : 0;
        }
    }
    if (rc > 0)
        rc = 0;
    busy_exit(r);
    ul_tls_dispatch = frame.prev;
    Py_XDECREF(method);
    Py_XDECREF(on_error);
    Py_XDECREF(until);
    if (rc < 0)
        return NULL;
    return PyLong_FromSsize_t(total);
}

static PyObject *Ring_reap(RingObject *r, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames)
{
    PyObject *a[1];
    if (ring_check(r) < 0 || check_not_dispatching(r, "reap") < 0)
        return NULL;
    if (ul_parse(&sig_reap, args, nargs, kwnames, a) < 0)
        return NULL;
    long long max_complete;
    if (arg_long(a[0], 0, 0, PY_SSIZE_T_MAX, "max_complete", &max_complete) < 0)
        return NULL;
    PyObject *results = take_backlog(r, (Py_ssize_t)max_complete);
    if (!results)
        return NULL;
    busy_enter(r);
    unsigned pending = sq_unsubmitted(r);
    /* Enter only when there is something for the kernel to do: SQEs to submit, or completion
     * work parked for us. */
    if (pending || taskrun_needed(r)) {
        store_rel(r->sq_ktail, r->sq_tail);
        int ret;
        do
            ret = ring_enter(r, pending, 0, IORING_ENTER_GETEVENTS, NULL, 0);
        while (ret < 0 && errno == EINTR);
        if (ret < 0 && errno != EAGAIN && errno != EBUSY) {
            raise_enter_error(errno);
            restore_backlog(r, results);
            Py_DECREF(results);
            busy_exit(r);
            return NULL;
        }
        if (ret >= 0 && (unsigned)ret >= pending)
            r->chain_open = 0;
    }
    if (harvest_into(r, results, (Py_ssize_t)max_complete, NULL) < 0) {
        restore_backlog(r, results);
        Py_DECREF(results);
        busy_exit(r);
        return NULL;
    }
    busy_exit(r);
    return results;
}

static PyObject *Ring_wake(RingObject *r, PyObject *noargs)
{
    (void)noargs;
    wake_waiter(r);
    Py_RETURN_NONE;
}

static PyObject *Ring_close(RingObject *r, PyObject *noargs)
{
    (void)noargs;
    if (ring_close_impl(r, 0) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Ring_enter(RingObject *r, PyObject *noargs)
{
    (void)noargs;
    if (r->closing) {
        PyErr_SetString(PyExc_ValueError, "I/O operation on a closed ring");
        return NULL;
    }
    Py_INCREF(r);
    return (PyObject *)r;
}

static PyObject *Ring_exit(RingObject *r, PyObject *args)
{
    (void)args;
    if (ring_close_impl(r, 0) < 0)
        return NULL;
    Py_RETURN_FALSE;
}

static PyObject *Ring_fileno(RingObject *r, PyObject *noargs)
{
    (void)noargs;
    if (r->closed) {
        PyErr_SetString(PyExc_ValueError, "I/O operation on a closed ring");
        return NULL;
    }
    return PyLong_FromLong(r->fd);
}

static int opcode_from(PyObject *name)
{
    if (PyLong_Check(name)) {
        long v = PyLong_AsLong(name);
        if (v == -1 && PyErr_Occurred())
            return -1;
        if (v < 0 || v > 255) {
            PyErr_SetString(PyExc_ValueError, "opcode must be 0-255");
            return -1;
        }
        return (int)v;
    }
    if (!PyUnicode_Check(name)) {
        PyErr_SetString(PyExc_TypeError, "op must be a name (str) or an opcode (int)");
        return -1;
    }
    const char *s = PyUnicode_AsUTF8(name);
    if (!s)
        return -1;
    if (strncasecmp(s, "IORING_OP_", 10) == 0)
        s += 10;
    for (int i = 0; i < UL_NOPS; i++)
        if (strcasecmp(s, ul_op_names[i]) == 0)
            return i;
    PyErr_Format(PyExc_ValueError, "unknown io_uring op name %R", name);
    return -1;
}

static PyObject *Ring_supports(RingObject *r, PyObject *name)
{
    int op = opcode_from(name);
    if (op < 0)
        return NULL;
    return PyBool_FromLong(r->ops[op]);
}

static PyObject *Ring_buffer_ring(RingObject *r, PyObject *args, PyObject *kwds);

static PyMethodDef Ring_methods[] = {
    {"prep_nop", (PyCFunction)(void (*)(void))Ring_prep_nop, METH_FASTCALL | METH_KEYWORDS,
     "prep_nop(ctx, *, link=False, hardlink=False) -> int\n\nA no-op; completes with res 0. "
     "Also the way to post a user completion (IOCP's PostQueuedCompletionStatus)."},
    {"prep_accept", (PyCFunction)(void (*)(void))Ring_prep_accept, METH_FASTCALL | METH_KEYWORDS,
     "prep_accept(fd, ctx, multishot=False, *, flags=SOCK_NONBLOCK|SOCK_CLOEXEC, link=False, "
     "hardlink=False) -> int\n\nres is the new socket fd. Multishot keeps accepting (CQE_F_MORE) "
     "until an error or cancel."},
    {"prep_connect", (PyCFunction)(void (*)(void))Ring_prep_connect,
     METH_FASTCALL | METH_KEYWORDS,
     "prep_connect(fd, sockaddr, ctx, *, link=False, hardlink=False) -> int\n\nsockaddr is "
     "(host, port) or (host, port, flowinfo, scope_id) with a numeric address."},
    {"prep_recv", (PyCFunction)(void (*)(void))Ring_prep_recv, METH_FASTCALL | METH_KEYWORDS,
     "prep_recv(fd, buffer, ctx, flags=0, *, start=0, nbytes=-1, link=False, hardlink=False) -> "
     "int\n\nReceives into the writable buffer[start:start+nbytes]; the ring holds the buffer "
     "until the completion."},
    {"prep_recv_multishot", (PyCFunction)(void (*)(void))Ring_prep_recv_multishot,
     METH_FASTCALL | METH_KEYWORDS,
     "prep_recv_multishot(fd, bufring, ctx, flags=0, *, link=False, hardlink=False) -> int\n\n"
     "Each completion carries a buffer id (flags >> CQE_BUFFER_SHIFT when CQE_F_BUFFER is set). "
     "Ends (no CQE_F_MORE) on EOF, error or -ENOBUFS; re-arm then."},
    {"prep_send", (PyCFunction)(void (*)(void))Ring_prep_send, METH_FASTCALL | METH_KEYWORDS,
     "prep_send(fd, data, ctx, flags=MSG_NOSIGNAL, *, start=0, nbytes=-1, link=False, "
     "hardlink=False, quiet=False) -> int\n\nres may be short: resubmit the rest "
     "(start=start+res). quiet=True (needs MSG_WAITALL): if the kernel finishes the send while "
     "it is submitted, that completion does not end wait(); it comes back with the next one."},
    {"prep_sendmsg", (PyCFunction)(void (*)(void))Ring_prep_sendmsg,
     METH_FASTCALL | METH_KEYWORDS,
     "prep_sendmsg(fd, buffers, ctx, flags=MSG_NOSIGNAL, *, link=False, hardlink=False) -> int"
     "\n\nGathering send of a sequence of bytes-like objects (the iovec stays alive)."},
    {"prep_read", (PyCFunction)(void (*)(void))Ring_prep_read, METH_FASTCALL | METH_KEYWORDS,
     "prep_read(fd, buffer, ctx, offset=-1, *, start=0, nbytes=-1, link=False, hardlink=False) "
     "-> int\n\noffset -1 reads at the file position."},
    {"prep_write", (PyCFunction)(void (*)(void))Ring_prep_write, METH_FASTCALL | METH_KEYWORDS,
     "prep_write(fd, data, ctx, offset=-1, *, start=0, nbytes=-1, link=False, hardlink=False) "
     "-> int"},
    {"prep_poll_add", (PyCFunction)(void (*)(void))Ring_prep_poll_add,
     METH_FASTCALL | METH_KEYWORDS,
     "prep_poll_add(fd, mask, ctx, multishot=False, *, link=False, hardlink=False) -> int\n\n"
     "res is the ready event mask (EPOLLIN, ...)."},
    {"prep_shutdown", (PyCFunction)(void (*)(void))Ring_prep_shutdown,
     METH_FASTCALL | METH_KEYWORDS,
     "prep_shutdown(fd, how, ctx, *, link=False, hardlink=False) -> int"},
    {"prep_close", (PyCFunction)(void (*)(void))Ring_prep_close, METH_FASTCALL | METH_KEYWORDS,
     "prep_close(fd, ctx, *, link=False, hardlink=False) -> int"},
    {"prep_cancel", (PyCFunction)(void (*)(void))Ring_prep_cancel, METH_FASTCALL | METH_KEYWORDS,
     "prep_cancel(op_id, ctx, *, link=False, hardlink=False) -> int\n\nres 0: found and "
     "cancelled (the target completes with -ECANCELED); -ENOENT: no such op (finished, or a "
     "stale id); -EALREADY: already running."},
    {"prep_cancel_fd", (PyCFunction)(void (*)(void))Ring_prep_cancel_fd,
     METH_FASTCALL | METH_KEYWORDS,
     "prep_cancel_fd(fd, ctx, all=True, *, link=False, hardlink=False) -> int\n\nCancels the "
     "ops on fd; res is the number cancelled (all=True) or 0/-ENOENT."},
    {"prep_timeout", (PyCFunction)(void (*)(void))Ring_prep_timeout,
     METH_FASTCALL | METH_KEYWORDS,
     "prep_timeout(seconds, ctx, count=0, *, link=False, hardlink=False) -> int\n\nres -ETIME "
     "when the time passed; 0 when count completions happened first."},
    {"prep_link_timeout", (PyCFunction)(void (*)(void))Ring_prep_link_timeout,
     METH_FASTCALL | METH_KEYWORDS,
     "prep_link_timeout(seconds, ctx, *, link=False, hardlink=False) -> int\n\nBounds the op "
     "prepared just before with link=True: it is cancelled (-ECANCELED) when the time passes "
     "(this completion: -ETIME), else this completes with -ECANCELED."},
    {"prep_splice", (PyCFunction)(void (*)(void))Ring_prep_splice, METH_FASTCALL | METH_KEYWORDS,
     "prep_splice(fd_in, off_in, fd_out, off_out, nbytes, ctx, flags=0, *, link=False, "
     "hardlink=False) -> int\n\nOne side must be a pipe; offsets -1 mean none."},
    {"submit", (PyCFunction)Ring_submit, METH_NOARGS,
     "submit() -> int\n\nSubmit the prepared SQEs; returns how many the kernel took."},
    {"wait", (PyCFunction)(void (*)(void))Ring_wait, METH_FASTCALL | METH_KEYWORDS,
     "wait(min_complete=1, timeout=None, max_complete=0) -> list[tuple[ctx, res, flags]]\n\n"
     "Submit what is pending, block (GIL released) until min_complete completions, the timeout, "
     "or wake(); return every completion available (at most max_complete if > 0)."},
    {"reap", (PyCFunction)(void (*)(void))Ring_reap, METH_FASTCALL | METH_KEYWORDS,
     "reap(max_complete=0) -> list[tuple[ctx, res, flags]]\n\nNever blocks: submits what is "
     "pending and runs deferred completion work only when needed, then returns what is there."},
    {"dispatch", (PyCFunction)(void (*)(void))Ring_dispatch, METH_FASTCALL | METH_KEYWORDS,
     "dispatch(min_complete=1, timeout=None, method=None, on_error=None) -> int\n\n"
     "wait() without the list: submit what is pending, block (GIL released) until min_complete "
     "completions, the timeout or wake(), and deliver every completion available by calling "
     "ctx.<method>(res, flags) -- or ctx(res, flags) when method is None -- in completion "
     "order, straight from C (no tuples). Returns how many were delivered. A completion's "
     "buffers are released before its callback runs, as wait() releases them before "
     "returning. A callback that raises an Exception is reported to on_error(exc, ctx) and "
     "the delivery carries on. Without on_error, or for a BaseException that is not an "
     "Exception (KeyboardInterrupt, SystemExit), or when on_error raises, the delivery stops: "
     "the completions reaped but not yet delivered go back to the ring's backlog, which the "
     "next wait()/reap()/dispatch() delivers first (without blocking), and the exception "
     "propagates. Callbacks may prepare "
     "ops, submit() and close() the ring; calling wait()/reap()/dispatch() on the same ring "
     "from a callback raises RuntimeError. Sets the ring's batch (see Ring.batch).\n\n"
     "until: a tuple of containers (say a loop's call queue and timer heap). With it, "
     "dispatch() runs pass after pass -- each one as above -- and returns only when a pass "
     "leaves one of them non-empty, ended on wake(), or the timeout passed; the count is the "
     "total. An event loop's steady state then never leaves C between passes; anything that "
     "must end the run adds to a container or calls wake()."},
    {"wake", (PyCFunction)Ring_wake, METH_NOARGS,
     "wake() -> None\n\nEnd one blocked wait() (possibly with an empty list). Any thread; wakes "
     "may coalesce."},
    {"supports", (PyCFunction)Ring_supports, METH_O,
     "supports(op) -> bool\n\nWhether the kernel supports an opcode ('recv', 'IORING_OP_RECV' "
     "or its number), from IORING_REGISTER_PROBE."},
    {"buffer_ring", (PyCFunction)(void (*)(void))Ring_buffer_ring, METH_VARARGS | METH_KEYWORDS,
     "buffer_ring(group_id, count, size, *, incremental=False) -> BufferRing\n\nRegister a "
     "provided-buffer ring of count (power of two) buffers of size bytes. incremental: "
     "IOU_PBUF_RING_INC (Linux 6.12), a receive consumes only the bytes it needs of a buffer."},
    {"close", (PyCFunction)Ring_close, METH_NOARGS,
     "close() -> None\n\nCancel everything, wait (bounded) for the final completions, release "
     "every buffer, unmap, close the fd. Idempotent."},
    {"fileno", (PyCFunction)Ring_fileno, METH_NOARGS, "fileno() -> int"},
    {"__enter__", (PyCFunction)Ring_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)Ring_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

/* ---- properties --------------------------------------------------------------------------- */

static PyObject *Ring_get_fd(RingObject *r, void *c)
{
    (void)c;
    return PyLong_FromLong(r->fd);
}
static PyObject *Ring_get_closed(RingObject *r, void *c)
{
    (void)c;
    return PyBool_FromLong(r->closing);
}
static PyObject *Ring_get_sq_entries(RingObject *r, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLong(r->sq_entries);
}
static PyObject *Ring_get_cq_entries(RingObject *r, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLong(r->cq_entries);
}
static PyObject *Ring_get_setup_flags(RingObject *r, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLong(r->setup_flags);
}
static PyObject *Ring_get_features_mask(RingObject *r, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLong(r->features);
}
static PyObject *Ring_get_features(RingObject *r, void *c)
{
    (void)c;
    PyObject *d = PyDict_New();
    if (!d)
        return NULL;
    for (int i = 0; i < UL_NFEATS; i++) {
        if (PyDict_SetItemString(d, ul_feat_names[i], (r->features >> i) & 1 ? Py_True : Py_False) <
            0) {
            Py_DECREF(d);
            return NULL;
        }
    }
    return d;
}
static PyObject *Ring_get_supported_ops(RingObject *r, void *c)
{
    (void)c;
    PyObject *s = PyFrozenSet_New(NULL);
    if (!s)
        return NULL;
    for (int i = 0; i < UL_NOPS; i++) {
        if (!r->ops[i])
            continue;
        PyObject *name = PyUnicode_FromString(ul_op_names[i]);
        if (!name || PySet_Add(s, name) < 0) {
            Py_XDECREF(name);
            Py_DECREF(s);
            return NULL;
        }
        Py_DECREF(name);
    }
    return s;
}
static PyObject *Ring_get_overflow_count(RingObject *r, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLongLong(r->overflow_events);
}
static PyObject *Ring_get_cq_dropped(RingObject *r, void *c)
{
    (void)c;
    if (r->closed)
        return PyLong_FromLong(0);
    return PyLong_FromUnsignedLong(load_acq(r->cq_koverflow));
}
static PyObject *Ring_get_inflight(RingObject *r, void *c)
{
    (void)c;
    return PyLong_FromSsize_t(r->inflight);
}
static PyObject *Ring_get_pending(RingObject *r, void *c)
{
    (void)c;
    if (r->closed)
        return PyLong_FromLong(0);
    return PyLong_FromUnsignedLong(sq_unsubmitted(r));
}
static PyObject *Ring_get_ext_blocks(RingObject *r, void *c)
{
    (void)c;
    return PyLong_FromSsize_t(r->ext_blocks);
}
static PyObject *Ring_get_single_issuer(RingObject *r, void *c)
{
    (void)c;
    return PyBool_FromLong(r->owner_only);
}
static PyObject *Ring_get_has_multishot_accept(RingObject *r, void *c)
{
    (void)c;
    return PyBool_FromLong(r->ops[UL_OP_SOCKET]);
}
static PyObject *Ring_get_has_recv_multishot(RingObject *r, void *c)
{
    (void)c;
    return PyBool_FromLong(r->ops[UL_OP_SEND_ZC]);
}
static PyObject *Ring_get_has_buffer_rings(RingObject *r, void *c)
{
    (void)c;
    return PyBool_FromLong(r->ops[UL_OP_SOCKET]);
}

static PyObject *Ring_get_registered_fd(RingObject *r, void *c)
{
    (void)c;
    return PyBool_FromLong(r->reg_index >= 0);
}
static PyObject *Ring_get_batch(RingObject *r, void *c)
{
    (void)c;
    return PyLong_FromSsize_t(r->batch);
}
static int ring_sync_send(PyObject *o)
{
    RingObject *r = (RingObject *)o;
    return r->batch > 0 && r->batch <= r->sync_send_batch;
}
/* The gate's start_send: the transport's first ring send of a flush, from C (SendContext). */
static int ring_start_send(PyObject *o, PyObject *send_ctx, PyObject *chunk)
{
    RingObject *r = (RingObject *)o;
    if (r->closing || !is_send_context(send_ctx) || !PyObject_CheckBuffer(chunk))
        return 0;
    RecvContextObject *st = send_owner(send_ctx);
    if (!st)
        return 0;
    if (ring_check(r) < 0 || send_submit(r, st->fd, chunk, send_ctx) < 0)
        return -1;
    st->ops++;
    return 1;
}
/* A transport asks its gate with a C call (ioladder/_sendgate.h), not through sync_send. */
static const ioladder_sendgate ring_sendgate = {ring_sync_send, ring_start_send};
static PyObject *Ring_get_sync_send(RingObject *r, void *c)
{
    (void)c;
    return PyBool_FromLong(ring_sync_send((PyObject *)r));
}
static PyObject *Ring_get_sync_send_batch(RingObject *r, void *c)
{
    (void)c;
    return PyLong_FromSsize_t(r->sync_send_batch);
}
static int Ring_set_sync_send_batch(RingObject *r, PyObject *v, void *c)
{
    (void)c;
    if (!v) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete sync_send_batch");
        return -1;
    }
    Py_ssize_t n = PyLong_AsSsize_t(v);
    if (n == -1 && PyErr_Occurred())
        return -1;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "sync_send_batch must be >= 0");
        return -1;
    }
    r->sync_send_batch = n;
    return 0;
}

static PyGetSetDef Ring_getset[] = {
    {"registered_fd", (getter)Ring_get_registered_fd, NULL,
     "True when io_uring_enter goes through a registered ring index (IORING_REGISTER_RING_FDS, "
     "Linux 5.18; single-issuer rings created with register_fd=True, the default) instead of "
     "the fd", NULL},
    {"batch", (getter)Ring_get_batch, NULL,
     "completions in the batch dispatch() is delivering (or delivered last): set before the "
     "first callback of each reaped chunk to what that call delivered so far plus the chunk plus "
     "what is still queued in the CQ; 0 before the first dispatch()", NULL},
    {"sync_send", (getter)Ring_get_sync_send, NULL,
     "0 < batch <= sync_send_batch: lets the ring be an ioladder Transport's send gate "
     "(_send_gate), open while dispatch() runs small batches", NULL},
    {"sync_send_batch", (getter)Ring_get_sync_send_batch, (setter)Ring_set_sync_send_batch,
     "the largest batch for which sync_send is true (default 0: never)", NULL},
    {"fd", (getter)Ring_get_fd, NULL, "the ring's file descriptor (-1 once closed)", NULL},
    {"closed", (getter)Ring_get_closed, NULL, "True once close() has begun", NULL},
    {"sq_entries", (getter)Ring_get_sq_entries, NULL, "submission queue size", NULL},
    {"cq_entries", (getter)Ring_get_cq_entries, NULL, "completion queue size", NULL},
    {"setup_flags", (getter)Ring_get_setup_flags, NULL,
     "the IORING_SETUP_* flags the kernel accepted (after fallbacks)", NULL},
    {"features", (getter)Ring_get_features, NULL,
     "dict: IORING_FEAT_* name (lower case, no prefix) -> bool", NULL},
    {"features_mask", (getter)Ring_get_features_mask, NULL, "raw io_uring_params.features",
     NULL},
    {"supported_ops", (getter)Ring_get_supported_ops, NULL,
     "frozenset of supported op names (from IORING_REGISTER_PROBE)", NULL},
    {"overflow_count", (getter)Ring_get_overflow_count, NULL,
     "times the CQ overflowed into the kernel's backlog (IORING_SQ_CQ_OVERFLOW seen and "
     "flushed); nothing is lost with IORING_FEAT_NODROP",
     NULL},
    {"cq_dropped", (getter)Ring_get_cq_dropped, NULL,
     "completions the kernel had to drop (its CQ overflow counter); 0 unless memory ran out",
     NULL},
    {"inflight", (getter)Ring_get_inflight, NULL,
     "ops prepared and not yet finally completed (their buffers are held)", NULL},
    {"pending", (getter)Ring_get_pending, NULL, "SQEs prepared but not yet submitted", NULL},
    {"ext_blocks", (getter)Ring_get_ext_blocks, NULL,
     "side-data blocks allocated for ops that hold a buffer or a sockaddr/timespec (in use or "
     "kept for reuse; freed at close, except those of ops that never completed)",
     NULL},
    {"single_issuer", (getter)Ring_get_single_issuer, NULL,
     "True if only the creating thread may use the ring", NULL},
    {"has_multishot_accept", (getter)Ring_get_has_multishot_accept, NULL,
     "multishot accept (Linux 5.19; inferred from the probe)", NULL},
    {"has_recv_multishot", (getter)Ring_get_has_recv_multishot, NULL,
     "multishot recv (Linux 6.0; inferred from the probe)", NULL},
    {"has_buffer_rings", (getter)Ring_get_has_buffer_rings, NULL,
     "provided buffer rings, IORING_REGISTER_PBUF_RING (Linux 5.19; inferred from the probe)",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyObject *Ring_repr(RingObject *r)
{
    if (r->closing)
        return PyUnicode_FromFormat("<%s closed>", Py_TYPE(r)->tp_name);
    return PyUnicode_FromFormat("<%s fd=%d sq=%u cq=%u flags=0x%x inflight=%zd>",
                                Py_TYPE(r)->tp_name, r->fd, r->sq_entries, r->cq_entries,
                                r->setup_flags, r->inflight);
}

static PyTypeObject Ring_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ioladder.kernel._uring.Ring",
    .tp_basicsize = sizeof(RingObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Ring(entries=256, *, flags=0, cq_entries=0, single_issuer=True)\n\n"
              "An io_uring instance: prepare ops with prep_*, submit, and reap completions as "
              "(ctx, res, flags) tuples with wait()/reap().",
    .tp_new = Ring_new,
    .tp_dealloc = (destructor)Ring_dealloc,
    .tp_finalize = Ring_finalize,
    .tp_traverse = (traverseproc)Ring_traverse,
    .tp_clear = (inquiry)Ring_clear,
    .tp_methods = Ring_methods,
    .tp_getset = Ring_getset,
    .tp_repr = (reprfunc)Ring_repr,
    .tp_weaklistoffset = offsetof(RingObject, weakreflist),
};

/* ------------------------------------------------------------------------------------------ */
/* BufferRing                                                                                 */

static inline uint16_t *br_tailp(BufferRingObject *b) { return &b->br[0].resv; }

static void br_put(BufferRingObject *b, uint32_t bid)
{
    struct ul_buf *e = &b->br[b->tail & b->mask];
    e->addr = (uint64_t)(uintptr_t)br_addr(b, bid);
    e->len = b->size;
    e->bid = (uint16_t)bid;
    b->tail++;
}

static inline void br_publish(BufferRingObject *b)
{
    __atomic_store_n(br_tailp(b), b->tail, __ATOMIC_RELEASE);
}

static int br_unregister(BufferRingObject *b)
{
    if (!b->registered)
        return 0;
    RingObject *r = b->ring;
    b->registered = 0;
    if (r->closing || r->fork_gen != ul_fork_gen)
        return 0; /* the ring's teardown drops the registration */
    struct ul_buf_reg reg;
    memset(&reg, 0, sizeof reg);
    reg.bgid = b->gid;
    if (sys_register(r->fd, IORING_UNREGISTER_PBUF_RING, &reg, 1) < 0)
        return -errno;
    return 0;
}

static PyObject *Ring_buffer_ring(RingObject *r, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"group_id", "count", "size", "incremental", NULL};
    long long gid, count, size;
    int inc = 0;
    if (ring_check(r) < 0)
        return NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "LLL|$p:buffer_ring", kwlist, &gid, &count,
                                     &size, &inc))
        return NULL;
    if (gid < 0 || gid > 65535) {
        PyErr_SetString(PyExc_ValueError, "group_id must be 0-65535");
        return NULL;
    }
    if (count < 1 || count > 32768 || (count & (count - 1))) {
        PyErr_SetString(PyExc_ValueError, "count must be a power of two between 1 and 32768");
        return NULL;
    }
    if (size < 1 || size > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "size must be between 1 and 2**31-1");
        return NULL;
    }
    BufferRingObject *b = PyObject_GC_New(BufferRingObject, &BufferRing_Type);
    if (!b)
        return NULL;
    b->ring = r;
    Py_INCREF(r);
    b->br = NULL;
    b->base = NULL;
    b->refs = NULL;
    b->off = NULL;
    b->inc = inc;
    b->registered = 0;
    b->exports = 0;
    b->users = 0;
    b->weakreflist = NULL;
    b->count = (uint32_t)count;
    b->mask = (uint32_t)count - 1;
    b->size = (uint32_t)size;
    b->stride = br_stride((size_t)size);
    b->gid = (uint16_t)gid;
    b->tail = 0;
    b->out = 0;
    long page = sysconf(_SC_PAGESIZE);
    b->br_sz = ((size_t)count * sizeof(struct ul_buf) + (size_t)page - 1) & ~((size_t)page - 1);
    b->base_sz = ((size_t)count * b->stride + (size_t)page - 1) & ~((size_t)page - 1);
    b->br_sz = b->br_sz ? b->br_sz : (size_t)page;
    PyObject_GC_Track(b);
    /* Page-aligned anonymous mappings: the kernel pins the ring's pages when it is registered. */
    void *ring_mem = mmap(NULL, b->br_sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                          -1, 0);
    void *base = mmap(NULL, b->base_sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
                      0);
    b->refs = PyMem_Calloc((size_t)count, sizeof *b->refs);
    b->off = PyMem_Calloc((size_t)count, sizeof *b->off);
    if (ring_mem == MAP_FAILED || base == MAP_FAILED || !b->refs || !b->off) {
        if (ring_mem != MAP_FAILED)
            munmap(ring_mem, b->br_sz);
        if (base != MAP_FAILED)
            munmap(base, b->base_sz);
        Py_DECREF(b);
        return PyErr_NoMemory();
    }
    b->br = ring_mem;
    b->base = base;
    /* An incremental ring is filled front to back, so in steady state every page of the slab
     * is touched in turn: transparent huge pages then spare a TLB miss per small receive, in
     * the kernel's copy and in ours (measured on the saea rung, 64 B echoes: incremental alone
     * saved nothing, with huge pages ~1 % of the server's CPU). A ring whose buffers are
     * consumed whole touches only each buffer's first bytes for small messages: no advice
     * there, or each first touch would make 2 MiB resident. Advice only: THP may be off. */
    if (inc)
        (void)madvise(base, b->base_sz, MADV_HUGEPAGE);
    struct ul_buf_reg reg;
    memset(&reg, 0, sizeof reg);
    reg.ring_addr = (uint64_t)(uintptr_t)b->br;
    reg.ring_entries = (uint32_t)count;
    reg.bgid = (uint16_t)gid;
    reg.flags = inc ? IOU_PBUF_RING_INC : 0;
    if (sys_register(r->fd, IORING_REGISTER_PBUF_RING, &reg, 1) < 0) {
        int err = errno;
        if (err == EINVAL && inc && r->ops[UL_OP_SOCKET])
            raise_errno_msg(err, "%s", "incrementally consumed provided buffers "
                                       "(IOU_PBUF_RING_INC) need Linux 6.12 or newer");
        else if (err == EEXIST)
            raise_errno_msg(err, "buffer group %lld is already registered on this ring", gid);
        else if (err == EINVAL && !r->ops[UL_OP_SOCKET])
            raise_errno_msg(err, "%s", "provided buffer rings (IORING_REGISTER_PBUF_RING) need "
                                       "Linux 5.19 or newer");
        else
            raise_errno_msg(err, "IORING_REGISTER_PBUF_RING failed: %s", strerror(err));
        Py_DECREF(b);
        return NULL;
    }
    b->registered = 1;
    for (uint32_t i = 0; i < (uint32_t)count; i++)
        br_put(b, i);
    br_publish(b);
    return (PyObject *)b;
}

static int br_check_owned(BufferRingObject *b, long long bid)
{
    if (bid < 0 || bid >= b->count) {
        PyErr_Format(PyExc_ValueError, "buffer id %lld out of range (0-%u)", bid, b->count - 1);
        return -1;
    }
    if (!b->refs[bid]) {
        PyErr_Format(PyExc_ValueError,
                     "buffer %lld is owned by the kernel (never handed out by a completion, or "
                     "already recycled)",
                     bid);
        return -1;
    }
    return 0;
}

/* The application is done with one completion's nbytes of buffer bid. With `more` (an
 * incremental ring's CQE_F_BUF_MORE) the kernel keeps the buffer and its next completion
 * starts after these bytes; otherwise the kernel is done with it and it goes back to the ring,
 * to be filled from its start. */
static void br_release(BufferRingObject *b, uint32_t bid, uint32_t nbytes, int more)
{
    if (more) {
        b->off[bid] += nbytes;
        if (--b->refs[bid] == 0)
            b->out--;
        return;
    }
    b->off[bid] = 0;
    b->refs[bid] = 0;
    b->out--;
    br_put(b, bid);
    br_publish(b);
}

/* take/view/recycle run once per received chunk: METH_FASTCALL with the ints read directly
 * (PyArg_ParseTuple showed up in perf at ~60-80 ns per call).  Arguments: bid, then nbytes
 * (required for take/view) and `more` (take/recycle; CQE_F_BUF_MORE of an incremental ring).
 * nbytes must fit in what is left of the buffer after its position (`off`). */
static int br_args(BufferRingObject *b, PyObject *const *args, Py_ssize_t nargs,
                   const char *name, Py_ssize_t need, Py_ssize_t most, uint32_t *bid,
                   uint32_t *nbytes, int *more)
{
    if (nargs < need || nargs > most) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd to %zd arguments (%zd given)", name, need,
                     most, nargs);
        return -1;
    }
    long long v[2] = {0, 0};
    for (Py_ssize_t i = 0; i < nargs && i < 2; i++) {
        if (!PyLong_Check(args[i])) {
            PyErr_Format(PyExc_TypeError, "%s() arguments must be int, not %.100s", name,
                         Py_TYPE(args[i])->tp_name);
            return -1;
        }
        v[i] = PyLong_AsLongLong(args[i]);
        if (v[i] == -1 && PyErr_Occurred())
            return -1;
    }
    *more = 0;
    if (nargs > 2 && (*more = PyObject_IsTrue(args[2])) < 0)
        return -1;
    if (*more && !b->inc) {
        PyErr_SetString(PyExc_ValueError,
                        "more=True (CQE_F_BUF_MORE) applies only to an incremental buffer ring");
        return -1;
    }
    if (br_check_owned(b, v[0]) < 0)
        return -1;
    *bid = (uint32_t)v[0];
    uint32_t room = b->size - b->off[*bid];
    if (v[1] < 0 || v[1] > room) {
        PyErr_Format(PyExc_ValueError, "nbytes must be between 0 and %u (what is left of the "
                     "buffer)", room);
        return -1;
    }
    *nbytes = (uint32_t)v[1];
    return 0;
}

static PyObject *BufferRing_take(BufferRingObject *b, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t bid, nbytes;
    int more;
    if (br_args(b, args, nargs, "take", 2, 3, &bid, &nbytes, &more) < 0)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(br_addr(b, bid) + b->off[bid], nbytes);
    if (!out)
        return NULL;
    br_release(b, bid, nbytes, more);
    return out;
}

static PyObject *BufferRing_view(BufferRingObject *b, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t bid, nbytes;
    int more;
    if (br_args(b, args, nargs, "view", 2, 2, &bid, &nbytes, &more) < 0)
        return NULL;
    PyObject *whole = PyMemoryView_FromObject((PyObject *)b);
    if (!whole)
        return NULL;
    Py_ssize_t start = br_addr(b, bid) + b->off[bid] - b->base;
    PyObject *part = PySequence_GetSlice(whole, start, start + (Py_ssize_t)nbytes);
    Py_DECREF(whole);
    return part;
}

static PyObject *BufferRing_recycle(BufferRingObject *b, PyObject *const *args,
                                    Py_ssize_t nargs)
{
    uint32_t bid, nbytes;
    int more;
    if (br_args(b, args, nargs, "recycle", 1, 3, &bid, &nbytes, &more) < 0)
        return NULL;
    br_release(b, bid, nbytes, more);
    Py_RETURN_NONE;
}

static PyObject *BufferRing_close(BufferRingObject *b, PyObject *noargs)
{
    (void)noargs;
    if (b->users > 0) {
        PyErr_Format(PyExc_RuntimeError,
                     "buffer ring group %u is in use by %zd pending op(s); cancel them first",
                     b->gid, b->users);
        return NULL;
    }
    if (b->registered && !b->ring->closing && ring_check(b->ring) < 0)
        return NULL;
    int err = br_unregister(b);
    if (err < 0) {
        raise_errno_msg(-err, "IORING_UNREGISTER_PBUF_RING failed: %s", strerror(-err));
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef BufferRing_methods[] = {
    {"take", (PyCFunction)(void (*)(void))BufferRing_take, METH_FASTCALL,
     "take(bid, nbytes, more=False) -> bytes\n\nCopy a completion's nbytes out of buffer bid "
     "and release them, as recycle(bid, nbytes, more) does."},
    {"view", (PyCFunction)(void (*)(void))BufferRing_view, METH_FASTCALL,
     "view(bid, nbytes) -> memoryview\n\nZero-copy read-only view of a completion's nbytes in "
     "buffer bid; valid until recycle(), after which the kernel may overwrite it."},
    {"recycle", (PyCFunction)(void (*)(void))BufferRing_recycle, METH_FASTCALL,
     "recycle(bid, nbytes=0, more=False) -> None\n\nRelease a completion's use of buffer bid. "
     "more: the completion had CQE_F_BUF_MORE (an incremental ring): the kernel keeps the "
     "buffer and fills it on after those nbytes. Otherwise the buffer goes back to the kernel, "
     "to be filled from its start. On an incremental ring a buffer's completions must be "
     "released in the order they came."},
    {"close", (PyCFunction)BufferRing_close, METH_NOARGS,
     "close() -> None\n\nUnregister the group (no op may still be using it)."},
    {NULL, NULL, 0, NULL},
};

static PyObject *BufferRing_get_available(BufferRingObject *b, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLong(b->count - b->out);
}
static PyObject *BufferRing_get_count(BufferRingObject *b, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLong(b->count);
}
static PyObject *BufferRing_get_size(BufferRingObject *b, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLong(b->size);
}
static PyObject *BufferRing_get_stride(BufferRingObject *b, void *c)
{
    (void)c;
    return PyLong_FromSize_t(b->stride);
}
static PyObject *BufferRing_get_group_id(BufferRingObject *b, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLong(b->gid);
}
static PyObject *BufferRing_get_incremental(BufferRingObject *b, void *c)
{
    (void)c;
    return PyBool_FromLong(b->inc);
}
static PyObject *BufferRing_get_registered(BufferRingObject *b, void *c)
{
    (void)c;
    return PyBool_FromLong(b->registered && !b->ring->closing);
}

static PyGetSetDef BufferRing_getset[] = {
    {"available", (getter)BufferRing_get_available, NULL,
     "buffers the application holds no completion of (count minus those handed out and not "
     "yet released)", NULL},
    {"count", (getter)BufferRing_get_count, NULL, "number of buffers", NULL},
    {"size", (getter)BufferRing_get_size, NULL, "bytes per buffer", NULL},
    {"stride", (getter)BufferRing_get_stride, NULL,
     "bytes from one buffer's start to the next in the slab (buffer i starts at i * stride): "
     "size rounded up to 64, plus 64 where that would start every buffer in the same cache set",
     NULL},
    {"group_id", (getter)BufferRing_get_group_id, NULL, "the buffer group id (bgid)", NULL},
    {"registered", (getter)BufferRing_get_registered, NULL, "still registered with its ring",
     NULL},
    {"incremental", (getter)BufferRing_get_incremental, NULL,
     "registered with IOU_PBUF_RING_INC: a receive uses only the bytes it needs of a buffer, "
     "and the buffer's next completion continues after them (CQE_F_BUF_MORE)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static int BufferRing_getbuffer(BufferRingObject *b, Py_buffer *view, int flags)
{
    if (PyBuffer_FillInfo(view, (PyObject *)b, b->base, (Py_ssize_t)b->base_sz, 1, flags) < 0)
        return -1;
    b->exports++;
    return 0;
}

static void BufferRing_releasebuffer(BufferRingObject *b, Py_buffer *view)
{
    (void)view;
    b->exports--;
}

static PyBufferProcs BufferRing_as_buffer = {
    (getbufferproc)BufferRing_getbuffer,
    (releasebufferproc)BufferRing_releasebuffer,
};

static int BufferRing_traverse(BufferRingObject *b, visitproc visit, void *arg)
{
    Py_VISIT((PyObject *)b->ring);
    return 0;
}

static int BufferRing_clear(BufferRingObject *b)
{
    if (b->ring && b->registered && b->users == 0 &&
        (!b->ring->owner_only || b->ring->owner == ul_gettid()))
        br_unregister(b);
    /* The ring reference is kept until dealloc: unregistering needs it. */
    return 0;
}

static void BufferRing_dealloc(BufferRingObject *b)
{
    PyObject_GC_UnTrack(b);
    if (b->ring && b->registered) {
        if (!b->ring->kernel_single_issuer || b->ring->owner == ul_gettid())
            br_unregister(b);
        b->registered = 0;
    }
    /* exports is 0 here: every view holds a reference to us. */
    if (b->br)
        munmap(b->br, b->br_sz);
    if (b->base)
        munmap(b->base, b->base_sz);
    PyMem_Free(b->refs);
    PyMem_Free(b->off);
    if (b->weakreflist)
        PyObject_ClearWeakRefs((PyObject *)b);
    Py_XDECREF(b->ring);
    PyObject_GC_Del(b);
}

static PyObject *BufferRing_repr(BufferRingObject *b)
{
    return PyUnicode_FromFormat("<BufferRing group=%u count=%u size=%u available=%u>", b->gid,
                                b->count, b->size, b->count - b->out);
}

static PyTypeObject BufferRing_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ioladder.kernel._uring.BufferRing",
    .tp_basicsize = sizeof(BufferRingObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A provided-buffer ring (IORING_REGISTER_PBUF_RING), made by Ring.buffer_ring().\n\n"
              "Whenever a completion has CQE_F_BUFFER set, buffer id flags >> CQE_BUFFER_SHIFT is "
              "the application's until take()/recycle() -- even when res <= 0.",
    .tp_dealloc = (destructor)BufferRing_dealloc,
    .tp_traverse = (traverseproc)BufferRing_traverse,
    .tp_clear = (inquiry)BufferRing_clear,
    .tp_methods = BufferRing_methods,
    .tp_getset = BufferRing_getset,
    .tp_repr = (reprfunc)BufferRing_repr,
    .tp_as_buffer = &BufferRing_as_buffer,
    .tp_weaklistoffset = offsetof(BufferRingObject, weakreflist),
};

/* ------------------------------------------------------------------------------------------ */
/* module                                                                                     */

static PyObject *mod_availability(PyObject *m, PyObject *noargs)
{
    (void)m;
    (void)noargs;
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    int fd = sys_setup(2, &p);
    if (fd < 0)
        return reason_for_errno(errno);
    int err = 0;
    if (sys_enter(fd, 0, 0, 0, NULL, 0) < 0)
        err = errno; /* a seccomp filter may allow setup yet block enter */
    close(fd);
    if (err)
        return reason_for_errno(err);
    if (!(p.features & IORING_FEAT_EXT_ARG))
        return reason_for_errno(ENOTSUP);
    Py_RETURN_NONE;
}

static PyObject *mod_reason_for_errno(PyObject *m, PyObject *args, PyObject *kwds)
{
    (void)m;
    static char *kwlist[] = {"errno", "io_uring_disabled", "io_uring_group", NULL};
    int err;
    long disabled = -2, group = -2;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|ll:_reason_for_errno", kwlist, &err,
                                     &disabled, &group))
        return NULL;
    return reason_for_errno_ex(err, disabled, group);
}

static PyMethodDef mod_methods[] = {
    {"_availability", (PyCFunction)mod_availability, METH_NOARGS,
     "_availability() -> str | None\n\nTry a tiny ring: None if usable, else the reason."},
    {"_reason_for_errno", (PyCFunction)(void (*)(void))mod_reason_for_errno,
     METH_VARARGS | METH_KEYWORDS,
     "_reason_for_errno(errno, io_uring_disabled=-2, io_uring_group=-2) -> str\n\nThe message "
     "UringUnavailable carries for that errno (-2: read the sysctl from /proc)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef uring_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ioladder.kernel._uring",
    .m_doc = "io_uring on raw syscalls: Ring, BufferRing, UringUnavailable and constants.",
    .m_size = -1,
    .m_methods = mod_methods,
};

PyMODINIT_FUNC PyInit__uring(void)
{
    for (ul_sig **s = all_sigs; *s; s++)
        if (!(*s)->interned && sig_init(*s) < 0)
            return NULL;
    if (PyType_Ready(&Ring_Type) < 0 || PyType_Ready(&BufferRing_Type) < 0 ||
        PyType_Ready(&RecvContext_Type) < 0 || PyType_Ready(&SendContext_Type) < 0)
        return NULL;
    if (!s_on_data && !(s_on_data = PyUnicode_InternFromString("_on_data")))
        return NULL;
    if (!s_on_sent && !(s_on_sent = PyUnicode_InternFromString("_on_sent")))
        return NULL;
    if (!s_next_chunk && !(s_next_chunk = PyUnicode_InternFromString("_next_chunk")))
        return NULL;
    if (!s_send_chunk && !(s_send_chunk = PyUnicode_InternFromString("_send_chunk")))
        return NULL;
    if (!PyDict_GetItemString(Ring_Type.tp_dict, SENDGATE_ATTR)) {
        PyObject *cap = PyCapsule_New((void *)&ring_sendgate, SENDGATE_CAPSULE, NULL);
        if (!cap || PyDict_SetItemString(Ring_Type.tp_dict, SENDGATE_ATTR, cap) < 0) {
            Py_XDECREF(cap);
            return NULL;
        }
        Py_DECREF(cap);
        PyType_Modified(&Ring_Type);
    }
    PyObject *m = PyModule_Create(&uring_module);
    if (!m)
        return NULL;
    if (!UringUnavailable) {
        UringUnavailable = PyErr_NewExceptionWithDoc(
            "ioladder.kernel._uring.UringUnavailable",
            "io_uring cannot be used on this machine; str() names the exact cause "
            "(kernel.io_uring_disabled, seccomp/container policy, kernel too old).",
            PyExc_OSError, NULL);
        if (!UringUnavailable)
            goto fail;
        pthread_atfork(NULL, NULL, ul_atfork_child);
    }
    Py_INCREF(UringUnavailable);
    if (PyModule_AddObject(m, "UringUnavailable", UringUnavailable) < 0) {
        Py_DECREF(UringUnavailable);
        goto fail;
    }
    Py_INCREF(&Ring_Type);
    if (PyModule_AddObject(m, "Ring", (PyObject *)&Ring_Type) < 0) {
        Py_DECREF(&Ring_Type);
        goto fail;
    }
    Py_INCREF(&BufferRing_Type);
    if (PyModule_AddObject(m, "BufferRing", (PyObject *)&BufferRing_Type) < 0) {
        Py_DECREF(&BufferRing_Type);
        goto fail;
    }
    Py_INCREF(&RecvContext_Type);
    if (PyModule_AddObject(m, "RecvContext", (PyObject *)&RecvContext_Type) < 0) {
        Py_DECREF(&RecvContext_Type);
        goto fail;
    }
    Py_INCREF(&SendContext_Type);
    if (PyModule_AddObject(m, "SendContext", (PyObject *)&SendContext_Type) < 0) {
        Py_DECREF(&SendContext_Type);
        goto fail;
    }
    struct {
        const char *name;
        long long value;
    } consts[] = {
        {"CQE_F_BUFFER", IORING_CQE_F_BUFFER},
        {"CQE_F_MORE", IORING_CQE_F_MORE},
        {"CQE_F_BUF_MORE", IORING_CQE_F_BUF_MORE},
        {"CQE_F_SOCK_NONEMPTY", IORING_CQE_F_SOCK_NONEMPTY},
        {"CQE_F_NOTIF", IORING_CQE_F_NOTIF},
        {"CQE_BUFFER_SHIFT", IORING_CQE_BUFFER_SHIFT},
        {"SETUP_CLAMP", IORING_SETUP_CLAMP},
        {"SETUP_SUBMIT_ALL", IORING_SETUP_SUBMIT_ALL},
        {"SETUP_COOP_TASKRUN", IORING_SETUP_COOP_TASKRUN},
        {"SETUP_TASKRUN_FLAG", IORING_SETUP_TASKRUN_FLAG},
        {"SETUP_SINGLE_ISSUER", IORING_SETUP_SINGLE_ISSUER},
        {"SETUP_DEFER_TASKRUN", IORING_SETUP_DEFER_TASKRUN},
        {"SETUP_CQSIZE", IORING_SETUP_CQSIZE},
        {"FEAT_SINGLE_MMAP", IORING_FEAT_SINGLE_MMAP},
        {"FEAT_NODROP", IORING_FEAT_NODROP},
        {"FEAT_EXT_ARG", IORING_FEAT_EXT_ARG},
        {"EPOLLIN", POLLIN},
        {"EPOLLPRI", POLLPRI},
        {"EPOLLOUT", POLLOUT},
        {"EPOLLERR", POLLERR},
        {"EPOLLHUP", POLLHUP},
        {"EPOLLRDHUP", 0x2000},
        {"MSG_NOSIGNAL", MSG_NOSIGNAL},
        {"MSG_WAITALL", MSG_WAITALL},
        {"MSG_DONTWAIT", MSG_DONTWAIT},
        {"MSG_MORE", MSG_MORE},
        {"MSG_PEEK", MSG_PEEK},
        {"SOCK_NONBLOCK", SOCK_NONBLOCK},
        {"SOCK_CLOEXEC", SOCK_CLOEXEC},
        {"SHUT_RD", SHUT_RD},
        {"SHUT_WR", SHUT_WR},
        {"SHUT_RDWR", SHUT_RDWR},
        {"SPLICE_F_MOVE", 1},
        {"SPLICE_F_NONBLOCK", 2},
        {"SPLICE_F_MORE", 4},
        {NULL, 0},
    };
    for (int i = 0; consts[i].name; i++)
        if (PyModule_AddObject(m, consts[i].name, PyLong_FromLongLong(consts[i].value)) < 0)
            goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
