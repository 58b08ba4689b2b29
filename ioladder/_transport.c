/* ioladder._transport: the hot path of the shared Transport, in C.
 *
 * Why: measured on the saea rung at a fixed 40k round trips/s (64 B echo), the server spends
 * ~10.7 us per round trip in the kernel and ~3.2 us in the interpreter, most of it in the
 * transport's per-message bookkeeping (write -> buffer -> driver.start_send, the driver's
 * _next_chunk and _on_sent, _on_data -> data_received). Those four methods, and the state
 * they touch, live here; everything else (close/abort, pause/resume, flow-control callbacks,
 * TransmitFile spans, errors) stays in Python in ``ioladder/transport.py``, which subclasses
 * ``TransportBase`` and is the one place the contract is written down. The C methods keep the
 * Python semantics exactly and hand every rare case back to a Python method:
 *
 *   write(data)          type/EOF checks, context check, then _write (dispatch if elsewhere)
 *   _write(data)         append, count, driver.start_send(self) when no flush runs,
 *                        _maybe_pause_protocol() above the high-water mark;
 *                        _write_after_loss() once released; with a send gate (below),
 *                        first a synchronous non-blocking send()
 *
 * The send gate (``_send_gate``): a completion driver may let the transport send at once,
 * in the caller's thread, when no flush is in progress and ``gate.sync_send`` is true: the
 * .NET ``SendAsync`` that completes synchronously. Only the bytes the socket does not take
 * go to the driver. The saea rung opens the gate while its completion batches are small
 * (one send syscall is cheaper than a send completion's round through the loop) and closes
 * it under load, where one io_uring_enter submits many sends. A gate type may publish a C
 * entry (``_sendgate.h``; the ring does), asked instead of the attribute; such an entry may
 * also start the flush's send itself, from C, with the transport's ``_send_ctx`` as the op's
 * context (the ring does: see its SendContext), instead of ``driver.start_send``.
 *   _on_data(data)       protocol.data_received(data); _hold(data) while paused,
 *                        _feed_buffered(data) for BufferedProtocol, _fatal_error on a raise
 *   _next_chunk()        the buffer's head, small chunks coalesced (up to COALESCE bytes)
 *   _on_sent(n)          consume n bytes, _resume_protocol() at the low-water mark,
 *                        _after_flush() when the buffer is empty
 *
 * Layout: ``TransportBase`` is a subclass of ``asyncio.Transport`` created at import with the
 * base's instance size plus this struct (the fields sit after ``BaseTransport._extra``), so
 * ``isinstance(t, asyncio.Transport)`` holds and Python code reads and writes the same fields
 * by their old attribute names (member descriptors).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "_cbase.h"
#include "_mcache.h"
#include "_sendgate.h"
#include <pythread.h>
#include <time.h>
#include <errno.h>
#include <sys/socket.h>

#define COALESCE (256 * 1024)

typedef struct {
    PyObject *protocol;     /* _protocol */
    PyObject *driver;       /* _driver */
    PyObject *buffer;       /* _buffer: list of bytes | memoryview | FileSpan */
    Py_ssize_t buffer_size; /* _buffer_size */
    Py_ssize_t high;        /* _high */
    Py_ssize_t low;         /* _low */
    double last_activity;   /* last_activity (time.monotonic() clock), kept while clocked */
    PyObject *send_gate;    /* _send_gate: try a synchronous send when gate.sync_send is true */
    const ioladder_sendgate *gate_c; /* the gate type's C entry (_sendgate.h), or NULL */
    PyObject *send_ctx;     /* _send_ctx: the op context a gate's start_send uses, or NULL */
    unsigned long ctx_tid;  /* _ctx_tid: the one thread that is the context; 0: ask the driver */
    int fd;                 /* _fd */
    char sending;           /* _sending */
    char closing;           /* _closing */
    char eof_requested;     /* _eof_requested */
    char shut_wr;           /* _shut_wr */
    char paused;            /* _paused */
    char eof;               /* _eof */
    char released;          /* _released */
    char buffered;          /* _buffered */
    char writing_paused;    /* _writing_paused */
    char clocked;           /* _clocked: stamp last_activity as bytes move (an idle timeout
                             * reads it); off, the hot path makes no clock call */
} Core;

static Py_ssize_t core_offset;   /* where Core starts in an instance */
static Py_ssize_t extra_offset;  /* BaseTransport._extra's slot */
static PyObject *FileSpanType;   /* set by _setup() */
static PyTypeObject *TransportBaseType;

static PyObject *s_data_received, *s_start_send, *s_shutdown_write, *s_maybe_pause,
    *s_resume, *s_release, *s_hold, *s_feed_buffered, *s_fatal_error, *s_in_context,
    *s_dispatch, *s_write, *s_write_after_loss, *s_close, *s_offset, *s_count,
    *s_data_failed, *s_sync_send, *s_on_error;

#define CORE(o) ((Core *)((char *)(o) + core_offset))
#define EXTRA(o) ((PyObject **)((char *)(o) + extra_offset))

static inline double now_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);  /* the clock time.monotonic() reads */
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The activity stamp: a clock read only when someone reads the stamp (an idle timeout). */
static inline void touch(Core *c)
{
    if (c->clocked)
        c->last_activity = now_monotonic();
}

static inline int is_filespan(PyObject *o) { return (PyObject *)Py_TYPE(o) == FileSpanType; }

/* Call a method of ``self`` that returns nothing useful; 0 or -1 with an exception set. */
static int call_void(PyObject *self, PyObject *name, PyObject *arg)
{
    PyObject *r = arg ? PyObject_CallMethodOneArg(self, name, arg)
                      : PyObject_CallMethodNoArgs(self, name);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* Call ``name`` on a field of the core (the driver, the protocol) holding a strong reference
 * for the duration: the callee may replace the field (set_protocol) and drop the last
 * reference to itself while it runs. A missing field raises instead of crashing. */
static PyObject *call_field(PyObject *target, const char *what, PyObject *name, PyObject *arg)
{
    if (target == NULL) {
        PyErr_Format(PyExc_RuntimeError, "transport has no %s", what);
        return NULL;
    }
    Py_INCREF(target);
    PyObject *r = PyObject_CallMethodOneArg(target, name, arg);
    Py_DECREF(target);
    return r;
}

static int check_setup(void)
{
    if (FileSpanType == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ioladder._transport._setup() was not called");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------- write */

static PyObject *T_write_in(PyObject *self, PyObject *data);

static PyObject *T_write(PyObject *self, PyObject *data)
{
    Core *c = CORE(self);
    Py_ssize_t n;
    if (PyBytes_CheckExact(data))
        n = PyBytes_GET_SIZE(data);
    else if (PyBytes_Check(data) || PyByteArray_Check(data) || PyMemoryView_Check(data)) {
        int t = PyObject_IsTrue(data);
        if (t < 0)
            return NULL;
        n = t;
    } else {
        return PyErr_Format(PyExc_TypeError,
                            "data argument must be a bytes-like object, not '%.200s'",
                            Py_TYPE(data)->tp_name);
    }
    if (c->eof_requested) {
        PyErr_SetString(PyExc_RuntimeError, "Cannot call write() after write_eof()");
        return NULL;
    }
    if (!n)
        Py_RETURN_NONE;
    int here;
    if (c->ctx_tid)
        here = PyThread_get_thread_ident() == c->ctx_tid;
    else {
        PyObject *r = PyObject_CallMethodNoArgs(self, s_in_context);
        if (r == NULL)
            return NULL;
        here = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (here < 0)
            return NULL;
    }
    if (here)
        return T_write_in(self, data);
    /* Another thread: hand a private copy to the connection's context (Rule 1). */
    PyObject *copy = PyBytes_FromObject(data);
    if (copy == NULL)
        return NULL;
    PyObject *bound = PyObject_GetAttr(self, s_write);
    if (bound == NULL) {
        Py_DECREF(copy);
        return NULL;
    }
    PyObject *driver = c->driver;
    if (driver == NULL) {
        Py_DECREF(bound);
        Py_DECREF(copy);
        PyErr_SetString(PyExc_RuntimeError, "transport has no driver");
        return NULL;
    }
    Py_INCREF(driver);
    PyObject *r = PyObject_CallMethodObjArgs(driver, s_dispatch, self, bound, copy, NULL);
    Py_DECREF(driver);
    Py_DECREF(bound);
    Py_DECREF(copy);
    return r == NULL ? NULL : (Py_DECREF(r), Py_NewRef(Py_None));
}

/* The send gate's synchronous attempt. 0: everything went (or the connection failed and was
 * told); 1: *chunk (replaced by the unsent rest) and *n are left for the driver; -1: error. */
static int try_send(PyObject *self, Core *c, PyObject **chunk, Py_ssize_t *n)
{
    int ok;
    if (c->gate_c)
        ok = c->gate_c->sync_send(c->send_gate);
    else {
        PyObject *open = PyObject_GetAttr(c->send_gate, s_sync_send);
        if (open == NULL)
            return -1;
        ok = PyObject_IsTrue(open);
        Py_DECREF(open);
    }
    if (ok <= 0)
        return ok < 0 ? -1 : 1;
    ssize_t sent;
    do
        sent = send(c->fd, PyBytes_AS_STRING(*chunk), (size_t)*n, MSG_DONTWAIT | MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    if (sent < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 1;
        PyErr_SetFromErrno(PyExc_OSError);
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        Py_XDECREF(type);
        Py_XDECREF(tb);
        int rc = call_void(self, s_on_error, value);
        Py_DECREF(value);
        return rc < 0 ? -1 : 0;
    }
    touch(c);
    if (sent == *n)
        return 0;
    if (sent > 0) {
        PyObject *view = PyMemoryView_FromObject(*chunk);
        PyObject *rest = view ? PySequence_GetSlice(view, sent, *n) : NULL;
        Py_XDECREF(view);
        if (rest == NULL) {
            /* Part of the bytes left: the rest must not be silently dropped. Fail the
             * connection (a reset) rather than corrupt the stream. */
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            PyErr_NormalizeException(&type, &value, &tb);
            Py_XDECREF(type);
            Py_XDECREF(tb);
            int rc = call_void(self, s_on_error, value);
            Py_XDECREF(value);
            return rc < 0 ? -1 : 0;
        }
        Py_SETREF(*chunk, rest);
        *n -= sent;
    }
    return 1;
}

static PyObject *T_next_chunk(PyObject *self, PyObject *unused);

/* A flush begins: the gate's C start_send when it has one and takes this chunk, else
 * driver.start_send(self). 0 or -1 with an exception set. */
static int start_send(PyObject *self, Core *c)
{
    if (c->gate_c && c->gate_c->start_send && c->send_ctx && c->send_ctx != Py_None) {
        PyObject *chunk = T_next_chunk(self, NULL);
        if (chunk == NULL)
            return -1;
        PyObject *gate = Py_NewRef(c->send_gate), *ctx = Py_NewRef(c->send_ctx);
        int rc = c->gate_c->start_send(gate, ctx, chunk);
        Py_DECREF(gate);
        Py_DECREF(ctx);
        Py_DECREF(chunk);
        if (rc != 0)
            return rc < 0 ? -1 : 0;
    }
    PyObject *r = call_field(c->driver, "driver", s_start_send, self);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *T_write_in(PyObject *self, PyObject *data)
{
    Core *c = CORE(self);
    if (c->released) {
        if (call_void(self, s_write_after_loss, NULL) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    if (c->buffer == NULL || !PyList_CheckExact(c->buffer)) {
        PyErr_SetString(PyExc_RuntimeError, "transport buffer is not initialised");
        return NULL;
    }
    PyObject *chunk;
    if (PyBytes_CheckExact(data))
        chunk = Py_NewRef(data);
    else if ((chunk = PyBytes_FromObject(data)) == NULL)  /* the caller may reuse its buffer */
        return NULL;
    Py_ssize_t n = PyBytes_GET_SIZE(chunk);
    if (!c->sending && c->send_gate != NULL && c->send_gate != Py_None &&
        PyList_GET_SIZE(c->buffer) == 0) {
        int sent = try_send(self, c, &chunk, &n);
        if (sent <= 0) {
            Py_DECREF(chunk);
            return sent < 0 ? NULL : Py_NewRef(Py_None);
        }
    }
    int rc = PyList_Append(c->buffer, chunk);
    Py_DECREF(chunk);
    if (rc < 0)
        return NULL;
    c->buffer_size += n;
    if (!c->sending) {
        c->sending = 1;
        if (start_send(self, c) < 0)
            return NULL;
    }
    if (c->buffer_size > c->high && call_void(self, s_maybe_pause, NULL) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* ----------------------------------------------------------------------------- receive */

static PyObject *T_on_data(PyObject *self, PyObject *data)
{
    Core *c = CORE(self);
    if (c->closing || c->eof)
        Py_RETURN_NONE;
    touch(c);
    if (c->paused) {
        if (call_void(self, s_hold, data) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *r;
    if (c->buffered)
        r = PyObject_CallMethodOneArg(self, s_feed_buffered, data);
    else if (c->protocol != NULL) {
        static mcache data_received_cache;
        PyObject *protocol = Py_NewRef(c->protocol); /* set_protocol() may replace it */
        r = mcache_call1(&data_received_cache, protocol, s_data_received, data);
        Py_DECREF(protocol);
    }
    else
        r = PyObject_GetAttr(Py_None, s_data_received);  /* raises AttributeError, as Python would */
    if (r != NULL) {
        Py_DECREF(r);
        Py_RETURN_NONE;
    }
    /* except BaseException as exc: self._fatal_error(exc, ...); re-raise if not an Exception */
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL)
        PyException_SetTraceback(value, tb);
    PyObject *f = PyObject_CallMethodObjArgs(self, s_fatal_error, value, s_data_failed, NULL);
    if (f == NULL) {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return NULL;
    }
    Py_DECREF(f);
    if (PyErr_GivenExceptionMatches(value, PyExc_Exception)) {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        Py_RETURN_NONE;
    }
    PyErr_Restore(type, value, tb);
    return NULL;
}

/* -------------------------------------------------------------------------------- send */

static Py_ssize_t chunk_len(PyObject *o)
{
    if (PyBytes_CheckExact(o))
        return PyBytes_GET_SIZE(o);
    return PyObject_Length(o);
}

static PyObject *T_next_chunk(PyObject *self, PyObject *unused)
{
    Core *c = CORE(self);
    PyObject *buf = c->buffer;
    if (buf == NULL || !PyList_CheckExact(buf) || PyList_GET_SIZE(buf) == 0) {
        PyErr_SetString(PyExc_IndexError, "_next_chunk() on an empty write buffer");
        return NULL;
    }
    if (check_setup() < 0)
        return NULL;
    Py_ssize_t items = PyList_GET_SIZE(buf);
    PyObject *head = PyList_GET_ITEM(buf, 0);
    if (items == 1 || is_filespan(head))
        return Py_NewRef(head);
    Py_ssize_t size = chunk_len(head);
    if (size < 0)
        return NULL;
    if (size >= COALESCE)
        return Py_NewRef(head);
    /* Coalesce small writes into one send: fewer syscalls or ring ops per byte. */
    Py_ssize_t k = 1;
    while (k < items) {
        PyObject *o = PyList_GET_ITEM(buf, k);
        if (is_filespan(o))
            break;
        Py_ssize_t n = chunk_len(o);
        if (n < 0)
            return NULL;
        if (size + n > COALESCE)
            break;
        size += n;
        k++;
    }
    if (k == 1)
        return Py_NewRef(head);
    PyObject *joined = PyBytes_FromStringAndSize(NULL, size);
    if (joined == NULL)
        return NULL;
    char *p = PyBytes_AS_STRING(joined);
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *o = PyList_GET_ITEM(buf, i);
        if (PyBytes_CheckExact(o)) {
            memcpy(p, PyBytes_AS_STRING(o), PyBytes_GET_SIZE(o));
            p += PyBytes_GET_SIZE(o);
            continue;
        }
        Py_buffer view;
        if (PyObject_GetBuffer(o, &view, PyBUF_CONTIG_RO) < 0) {
            Py_DECREF(joined);
            return NULL;
        }
        memcpy(p, view.buf, view.len);
        p += view.len;
        PyBuffer_Release(&view);
    }
    PyObject *one = PyList_New(1);
    if (one == NULL) {
        Py_DECREF(joined);
        return NULL;
    }
    PyList_SET_ITEM(one, 0, Py_NewRef(joined));
    int rc = PyList_SetSlice(buf, 0, k, one);
    Py_DECREF(one);
    if (rc < 0) {
        Py_DECREF(joined);
        return NULL;
    }
    return joined;
}

static PyObject *T_on_sent(PyObject *self, PyObject *arg)
{
    Core *c = CORE(self);
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (check_setup() < 0)
        return NULL;
    PyObject *buf = c->buffer;
    if (buf == NULL || !PyList_CheckExact(buf)) {
        PyErr_SetString(PyExc_RuntimeError, "transport buffer is not initialised");
        return NULL;
    }
    if (n) {
        if (PyList_GET_SIZE(buf) == 0) {
            PyErr_SetString(PyExc_IndexError, "_on_sent() with an empty write buffer");
            return NULL;
        }
        touch(c);
        PyObject *chunk = Py_NewRef(PyList_GET_ITEM(buf, 0));
        Py_ssize_t len = chunk_len(chunk);
        if (len < 0) {
            Py_DECREF(chunk);
            return NULL;
        }
        if (n >= len) {
            if (PyList_SetSlice(buf, 0, 1, NULL) < 0) {
                Py_DECREF(chunk);
                return NULL;
            }
            if (is_filespan(chunk) && call_void(chunk, s_close, NULL) < 0) {
                Py_DECREF(chunk);
                return NULL;
            }
        } else if (is_filespan(chunk)) {
            PyObject *off = PyObject_GetAttr(chunk, s_offset), *cnt = NULL, *noff = NULL,
                     *ncnt = NULL, *delta = PyLong_FromSsize_t(n);
            int ok = off != NULL && delta != NULL &&
                     (cnt = PyObject_GetAttr(chunk, s_count)) != NULL &&
                     (noff = PyNumber_Add(off, delta)) != NULL &&
                     (ncnt = PyNumber_Subtract(cnt, delta)) != NULL &&
                     PyObject_SetAttr(chunk, s_offset, noff) == 0 &&
                     PyObject_SetAttr(chunk, s_count, ncnt) == 0;
            Py_XDECREF(off);
            Py_XDECREF(cnt);
            Py_XDECREF(noff);
            Py_XDECREF(ncnt);
            Py_XDECREF(delta);
            if (!ok) {
                Py_DECREF(chunk);
                return NULL;
            }
        } else {
            PyObject *view = PyMemoryView_FromObject(chunk), *rest = NULL;
            if (view != NULL) {
                rest = PySequence_GetSlice(view, n, len);
                Py_DECREF(view);
            }
            if (rest == NULL || PyList_SetItem(buf, 0, rest) < 0) {  /* steals rest */
                Py_DECREF(chunk);
                return NULL;
            }
        }
        Py_DECREF(chunk);
        c->buffer_size -= n;
    }
    if (c->writing_paused && c->buffer_size <= c->low && call_void(self, s_resume, NULL) < 0)
        return NULL;
    if (PyList_GET_SIZE(buf))
        Py_RETURN_TRUE;
    c->sending = 0;
    /* _after_flush: a close() waiting for the flush releases; a write_eof() shuts down. */
    if (c->closing) {
        PyObject *r = PyObject_CallMethodOneArg(self, s_release, Py_False);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    } else if (c->eof_requested && !c->shut_wr) {
        c->shut_wr = 1;
        PyObject *r = call_field(c->driver, "driver", s_shutdown_write, self);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    }
    Py_RETURN_FALSE;
}

/* --------------------------------------------------------------------------- the type */

static int T_traverse(PyObject *self, visitproc visit, void *arg)
{
    Core *c = CORE(self);
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(*EXTRA(self));
    Py_VISIT(c->protocol);
    Py_VISIT(c->driver);
    Py_VISIT(c->buffer);
    Py_VISIT(c->send_gate);
    Py_VISIT(c->send_ctx);
    return 0;
}

static int T_clear(PyObject *self)
{
    Core *c = CORE(self);
    Py_CLEAR(c->buffer);  /* first: a finalizer it runs may still call write() */
    Py_CLEAR(*EXTRA(self));
    Py_CLEAR(c->protocol);
    Py_CLEAR(c->send_gate);
    c->gate_c = NULL;
    Py_CLEAR(c->send_ctx);
    Py_CLEAR(c->driver);
    return 0;
}

static void T_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    T_clear(self);
    tp->tp_free(self);
    /* Every instance holds a reference to its (heap) type; a Python subclass's
     * subtype_dealloc leaves dropping it to its heap-type base, this function. */
    Py_DECREF(tp);
}

static PyMethodDef T_methods[] = {
    {"write", (PyCFunction)T_write, METH_O, "write(data): queue data to send (asyncio.Transport)."},
    {"_write", (PyCFunction)T_write_in, METH_O, "_write(data): write() in the connection's context."},
    {"_on_data", (PyCFunction)T_on_data, METH_O, "_on_data(data): the driver received data."},
    {"_next_chunk", (PyCFunction)T_next_chunk, METH_NOARGS,
     "_next_chunk() -> the bytes (or FileSpan) the driver should send next."},
    {"_on_sent", (PyCFunction)T_on_sent, METH_O,
     "_on_sent(n) -> bool: the driver sent n bytes of _next_chunk(); True if more remains."},
    {NULL},
};

#define M(name, type, field) {name, type, 0, 0, NULL}
static PyMemberDef T_members[] = {
    M("_protocol", T_OBJECT, protocol),
    M("_driver", T_OBJECT, driver),
    M("_buffer", T_OBJECT, buffer),
    M("_buffer_size", T_PYSSIZET, buffer_size),
    M("_high", T_PYSSIZET, high),
    M("_low", T_PYSSIZET, low),
    M("last_activity", T_DOUBLE, last_activity),
    M("_ctx_tid", T_ULONG, ctx_tid),
    M("_fd", T_INT, fd),
    M("_sending", T_BOOL, sending),
    M("_closing", T_BOOL, closing),
    M("_eof_requested", T_BOOL, eof_requested),
    M("_shut_wr", T_BOOL, shut_wr),
    M("_paused", T_BOOL, paused),
    M("_eof", T_BOOL, eof),
    M("_released", T_BOOL, released),
    M("_buffered", T_BOOL, buffered),
    M("_writing_paused", T_BOOL, writing_paused),
    M("_clocked", T_BOOL, clocked),
    M("_send_ctx", T_OBJECT, send_ctx),
    {NULL},
};
static const Py_ssize_t member_field[] = {
    offsetof(Core, protocol), offsetof(Core, driver), offsetof(Core, buffer),
    offsetof(Core, buffer_size), offsetof(Core, high), offsetof(Core, low),
    offsetof(Core, last_activity), offsetof(Core, ctx_tid),
    offsetof(Core, fd), offsetof(Core, sending),
    offsetof(Core, closing), offsetof(Core, eof_requested), offsetof(Core, shut_wr),
    offsetof(Core, paused), offsetof(Core, eof), offsetof(Core, released),
    offsetof(Core, buffered), offsetof(Core, writing_paused), offsetof(Core, clocked),
    offsetof(Core, send_ctx),
};

_Static_assert(sizeof(member_field) / sizeof(member_field[0]) ==
                   sizeof(T_members) / sizeof(T_members[0]) - 1,
               "T_members and member_field must list the same fields in the same order");

/* _send_gate: a plain attribute to Python; setting it also looks up the gate type's C entry. */
static PyObject *T_get_send_gate(PyObject *self, void *closure)
{
    PyObject *g = CORE(self)->send_gate;
    return Py_NewRef(g ? g : Py_None);
}

static int T_set_send_gate(PyObject *self, PyObject *value, void *closure)
{
    Core *c = CORE(self);
    const ioladder_sendgate *gate_c = NULL;
    if (value != NULL && value != Py_None) {
        PyObject *cap = PyObject_GetAttrString((PyObject *)Py_TYPE(value), SENDGATE_ATTR);
        if (cap != NULL && PyCapsule_IsValid(cap, SENDGATE_CAPSULE))
            gate_c = PyCapsule_GetPointer(cap, SENDGATE_CAPSULE);
        Py_XDECREF(cap);
        if (PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError))
                return -1;
            PyErr_Clear();  /* no C entry: write() reads gate.sync_send */
        }
    }
    c->gate_c = gate_c;
    Py_XSETREF(c->send_gate, Py_XNewRef(value));
    return 0;
}

static PyGetSetDef T_getset[] = {
    {"_send_gate", T_get_send_gate, T_set_send_gate,
     "the driver's send gate: None, or an object whose sync_send says whether write() may "
     "try a synchronous send right now", NULL},
    {NULL},
};

static PyType_Slot T_slots[] = {
    {Py_tp_doc, "The C core of ioladder.transport.Transport (see ioladder/_transport.c)."},
    {Py_tp_traverse, T_traverse},
    {Py_tp_clear, T_clear},
    {Py_tp_dealloc, T_dealloc},
    {Py_tp_methods, T_methods},
    {Py_tp_members, T_members},
    {Py_tp_getset, T_getset},
    {0, NULL},
};

static PyType_Spec T_spec = {
    .name = "ioladder._transport.TransportBase",
    .basicsize = 0,  /* set at import: asyncio.Transport's size + sizeof(Core) */
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = T_slots,
};

static PyObject *m_setup(PyObject *module, PyObject *filespan)
{
    if (!PyType_Check(filespan)) {
        PyErr_SetString(PyExc_TypeError, "_setup(FileSpan) wants the FileSpan class");
        return NULL;
    }
    Py_XSETREF(FileSpanType, Py_NewRef(filespan));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"_setup", (PyCFunction)m_setup, METH_O, "_setup(FileSpan): the write buffer's file item type."},
    {NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "ioladder._transport",
    "The shared Transport's hot path in C (see the source's header comment).", -1,
    module_methods,
};

#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL

PyMODINIT_FUNC PyInit__transport(void)
{
    INTERN(s_data_received, "data_received");
    INTERN(s_start_send, "start_send");
    INTERN(s_shutdown_write, "shutdown_write");
    INTERN(s_maybe_pause, "_maybe_pause_protocol");
    INTERN(s_resume, "_resume_protocol");
    INTERN(s_release, "_release");
    INTERN(s_hold, "_hold");
    INTERN(s_feed_buffered, "_feed_buffered");
    INTERN(s_fatal_error, "_fatal_error");
    INTERN(s_in_context, "_in_context");
    INTERN(s_dispatch, "dispatch");
    INTERN(s_write, "_write");
    INTERN(s_write_after_loss, "_write_after_loss");
    INTERN(s_close, "close");
    INTERN(s_offset, "offset");
    INTERN(s_count, "count");
    INTERN(s_data_failed, "protocol.data_received() call failed");
    INTERN(s_sync_send, "sync_send");
    INTERN(s_on_error, "_on_error");

    PyObject *asyncio = PyImport_ImportModule("asyncio");
    if (asyncio == NULL)
        return NULL;
    PyObject *base = PyObject_GetAttrString(asyncio, "Transport");
    PyObject *base_transport = PyObject_GetAttrString(asyncio, "BaseTransport");
    Py_DECREF(asyncio);
    if (base == NULL || base_transport == NULL || !PyType_Check(base)) {
        Py_XDECREF(base);
        Py_XDECREF(base_transport);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ImportError, "asyncio.Transport is not a class");
        return NULL;
    }
    /* BaseTransport declares __slots__ = ('_extra',): find that slot's offset. */
    extra_offset = cbase_slot_offset(base_transport, "_extra");
    Py_DECREF(base_transport);
    if (extra_offset < 0) {
        Py_DECREF(base);
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        Py_DECREF(base);
        return NULL;
    }
    TransportBaseType = cbase_create(module, &T_spec, base, T_members, member_field,
                                     sizeof(member_field) / sizeof(member_field[0]),
                                     sizeof(Core), _Alignof(Core), &core_offset);
    Py_DECREF(base);
    if (TransportBaseType == NULL || PyModule_AddObjectRef(module, "TransportBase",
                                                           (PyObject *)TransportBaseType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
