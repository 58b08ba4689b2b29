/* ioladder.aio._speedups: the aio loop's per-message and per-iteration paths, in C.
 *
 * Why: at a fixed offered load (~1-2 completions per loop iteration) the server's interpreter
 * time is spent in a handful of short Python functions run once per message or per iteration:
 * the socket transport's write(), _flush(), _on_sent() and _on_recv(), and the loop's running
 * of its ready queue and of the completions' callbacks. The kernel part is already cheaper
 * than uvloop's; this is the part uvloop has in C.
 *
 * TransportCore is the base of ioladder.aio._transports.SocketTransport: a subclass of
 * asyncio.transports._FlowControlMixin created at import with the base's instance size plus
 * the Core struct below, so SocketTransport is still an asyncio.Transport and its Python code
 * reads and writes these fields by their old attribute names (member descriptors). The C
 * methods are the fast paths of the Python ones they replace, and hand every other case back
 * to a Python method of the transport, which stays the one place the contract is written:
 *
 *   is_closing()        _closing (StreamWriter.drain() asks on every call)
 *   write(data)         small bytes while nothing is special (_wfast): append, count, queue
 *                       the transport for the loop's next flush; else _write(data)
 *   _flush()            the buffer as one SEND (ring.prep_send, quiet when nobody waits)
 *   _on_sent(res, fl)   all sent, nothing more to do; else _sent(res)
 *   _on_recv(res, fl)   data, recv still armed, reading normally: take the chunk from the
 *                       buffer ring and call the protocol in the transport's context;
 *                       else _on_recv_data / _on_recv_end
 *
 * The loop helpers run_ready(), dispatch() and flush_all() are the three loops of
 * UringEventLoop._iterate (see ioladder/aio/_loop.py), with the same error handling.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "../_cbase.h"
#include <string.h>
#include <sys/socket.h>

#define BATCH_MAX 16384 /* _transports._BATCH_MAX: bigger writes go at once */

typedef struct {
    PyObject *ctx;        /* _ctx: the transport's contextvars.Context */
    PyObject *deliver;    /* _deliver: protocol.data_received (or the BufferedProtocol feeder) */
    PyObject *take;       /* _take: the buffer ring's take(bid, nbytes, more) */
    PyObject *buffer;     /* _buffer: list of bytes written since the last send */
    PyObject *sending;    /* _sending: the bytes of the SEND in flight, or None */
    PyObject *send_id;    /* _send_id */
    PyObject *prep_send;  /* _prep_send: ring.prep_send */
    PyObject *on_sent_cb; /* _on_sent_cb: self._on_sent, the SEND's completion callback */
    Py_ssize_t buffered;  /* _buffered: bytes in _buffer */
    Py_ssize_t send_off;  /* _send_off */
    Py_ssize_t send_len;  /* _send_len: bytes of the SEND in flight */
    Py_ssize_t conn_lost; /* _conn_lost */
    int fd;               /* _fd */
    char rfast;           /* _rfast: reading normally */
    char wfast;           /* _wfast: a write needs no check */
    char queued;          /* _queued: the buffer goes without further action */
    char closing;         /* _closing */
} Core;

static Py_ssize_t core_offset;
/* the object slots of the bases (BaseTransport._extra, _FlowControlMixin's four) */
static const char *const base_slot_names[] = {"_extra", "_loop", "_protocol_paused",
                                              "_high_water", "_low_water"};
#define N_BASE_SLOTS 5
static Py_ssize_t base_slot[N_BASE_SLOTS];
#define SLOT(o, i) ((PyObject **)((char *)(o) + base_slot[i]))
#define LOOP(o) (*SLOT(o, 1))
#define PROTOCOL_PAUSED(o) (*SLOT(o, 2))
#define HIGH_WATER(o) (*SLOT(o, 3))

#define CORE(o) ((Core *)((char *)(o) + core_offset))

static PyTypeObject *CoreType;
static PyObject *s_write, *s_defer_write, *s_maybe_pause, *s_fatal_error, *s_sent,
    *s_on_recv_data, *s_on_recv_end, *s_run, *s_quiet_kw, *s_send_flags, *s_data_failed,
    *s_write_failed, *s_flush, *s_popleft, *s_cancelled, *s_context, *s_callback, *s_args,
    *s_backlog, *s_handler_error;

static int call_method_void(PyObject *self, PyObject *name, PyObject *const *args, size_t n)
{
    PyObject *stack[4];
    stack[0] = self;
    for (size_t i = 0; i < n; i++)
        stack[i + 1] = args[i];
    PyObject *r = PyObject_VectorcallMethod(name, stack, (n + 1) | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                            NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* The exception set now is SystemExit or KeyboardInterrupt: those propagate, as
 * ``except (SystemExit, KeyboardInterrupt): raise`` in the Python code. */
static int exit_exception(void)
{
    return PyErr_ExceptionMatches(PyExc_SystemExit) ||
           PyErr_ExceptionMatches(PyExc_KeyboardInterrupt);
}

/* Take the current exception as an object with its traceback attached (NULL if none). */
static PyObject *fetch_exception(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != NULL && tb != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

/* ``except BaseException as exc: self._fatal_error(exc, message)`` */
static int fatal_error(PyObject *self, PyObject *message)
{
    PyObject *exc = fetch_exception();
    if (exc == NULL)
        return 0;
    PyObject *args[2] = {exc, message};
    int r = call_method_void(self, s_fatal_error, args, 2);
    Py_DECREF(exc);
    return r;
}

/* Call fn(arg) inside the context ctx (ctx.run(fn, arg)). */
static PyObject *run_in(PyObject *ctx, PyObject *fn, PyObject *arg)
{
    if (ctx != NULL && PyContext_CheckExact(ctx)) {
        if (PyContext_Enter(ctx) < 0)
            return NULL;
        PyObject *r = PyObject_CallOneArg(fn, arg);
        if (PyContext_Exit(ctx) < 0) {
            Py_XDECREF(r);
            return NULL;
        }
        return r;
    }
    if (ctx == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "transport has no context");
        return NULL;
    }
    PyObject *args[3] = {ctx, fn, arg};
    return PyObject_VectorcallMethod(s_run, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* self._high_water as a C number (the mixin keeps it as a Python int). */
static int high_water(PyObject *self, Py_ssize_t *out)
{
    PyObject *hw = HIGH_WATER(self);
    if (hw == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_high_water");
        return -1;
    }
    *out = PyLong_AsSsize_t(hw);
    if (*out == -1 && PyErr_Occurred())
        return -1;
    return 0;
}

/* ----------------------------------------------------------------------------- writing */

static PyObject *T_write(PyObject *self, PyObject *data)
{
    Core *c = CORE(self);
    if (!(c->wfast && PyBytes_CheckExact(data) && PyBytes_GET_SIZE(data) <= BATCH_MAX &&
          c->buffer != NULL && PyList_CheckExact(c->buffer)))
        return PyObject_CallMethodOneArg(self, s_write, data);
    if (PyList_Append(c->buffer, data) < 0)
        return NULL;
    c->buffered += PyBytes_GET_SIZE(data);
    if (!c->queued) {
        c->queued = 1;
        if (c->sending == NULL || c->sending == Py_None) {
            /* loop running: flushq.append; not running: the buffer goes to the socket now */
            PyObject *loop = LOOP(self);
            if (loop == NULL) {
                PyErr_SetString(PyExc_AttributeError, "_loop");
                return NULL;
            }
            Py_INCREF(loop);
            PyObject *defer = PyObject_GetAttr(loop, s_defer_write);
            Py_DECREF(loop);
            if (defer == NULL)
                return NULL;
            PyObject *r = PyObject_CallOneArg(defer, self);
            Py_DECREF(defer);
            if (r == NULL)
                return NULL;
            Py_DECREF(r);
        }
    }
    Py_ssize_t hw;
    if (high_water(self, &hw) < 0)
        return NULL;
    if (c->buffered + c->send_len > hw && call_method_void(self, s_maybe_pause, NULL, 0) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* b"".join(buf) for a list of bytes (what write() and _write() append). */
static PyObject *join(PyObject *buf)
{
    Py_ssize_t n = PyList_GET_SIZE(buf), total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(buf, i);
        if (!PyBytes_CheckExact(item)) {
            PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
            if (empty == NULL)
                return NULL;
            PyObject *r = PyObject_CallMethod(empty, "join", "O", buf);
            Py_DECREF(empty);
            return r;
        }
        total += PyBytes_GET_SIZE(item);
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        return NULL;
    char *p = PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(buf, i);
        memcpy(p, PyBytes_AS_STRING(item), (size_t)PyBytes_GET_SIZE(item));
        p += PyBytes_GET_SIZE(item);
    }
    return out;
}

/* The loop is about to enter the ring: hand the buffer to the kernel as one SEND. */
static int flush(PyObject *self)
{
    Core *c = CORE(self);
    PyObject *buf = c->buffer;
    int sending = c->sending != NULL && c->sending != Py_None;
    if (sending || buf == NULL || !PyList_CheckExact(buf) || PyList_GET_SIZE(buf) == 0 ||
        c->conn_lost) {
        c->queued = (char)sending;
        return 0;
    }
    PyObject *data;
    if (PyList_GET_SIZE(buf) == 1) {
        data = Py_NewRef(PyList_GET_ITEM(buf, 0));
    } else {
        data = join(buf);
        if (data == NULL)
            return -1;
    }
    if (PyList_SetSlice(buf, 0, PyList_GET_SIZE(buf), NULL) < 0) {
        Py_DECREF(data);
        return -1;
    }
    Py_XSETREF(c->sending, data); /* the field holds the reference */
    c->send_off = 0;
    Py_ssize_t n = c->send_len = c->buffered;
    c->buffered = 0;
    Py_ssize_t hw;
    if (high_water(self, &hw) < 0)
        return -1;
    /* Quiet (the ring does not end its wait for this send's completion when the kernel
     * finishes it while submitting) unless someone waits on it: a close or write_eof to
     * finish, a sendfile, a paused protocol to resume, or a pause to come. */
    PyObject *paused = PROTOCOL_PAUSED(self);
    int ppaused = paused == NULL ? 0 : PyObject_IsTrue(paused);
    if (ppaused < 0)
        return -1;
    int quiet = c->wfast && !c->closing && !ppaused && n <= hw;
    PyObject *fd = PyLong_FromLong(c->fd);
    if (fd == NULL)
        return -1;
    PyObject *prep = c->prep_send, *cb = c->on_sent_cb;
    PyObject *id = NULL;
    if (prep == NULL || cb == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "transport has no ring");
    } else {
        Py_INCREF(prep);
        Py_INCREF(cb);
        Py_INCREF(data);
        PyObject *args[6] = {NULL, fd, data, cb, s_send_flags, quiet ? Py_True : Py_False};
        id = PyObject_Vectorcall(prep, args + 1, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, s_quiet_kw);
        Py_DECREF(data);
        Py_DECREF(cb);
        Py_DECREF(prep);
    }
    Py_DECREF(fd);
    if (id == NULL) {
        if (exit_exception())
            return -1;
        Py_CLEAR(c->sending);
        c->send_len = 0;
        c->queued = 0;
        return fatal_error(self, s_write_failed);
    }
    Py_XSETREF(c->send_id, id);
    if (n > hw)
        return call_method_void(self, s_maybe_pause, NULL, 0);
    return 0;
}

static PyObject *T_flush(PyObject *self, PyObject *noargs)
{
    if (flush(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *T_on_sent(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2)
        return PyErr_Format(PyExc_TypeError, "_on_sent() takes 2 arguments (%zd given)", nargs);
    Core *c = CORE(self);
    Py_CLEAR(c->send_id);
    long res = PyLong_AsLong(args[0]);
    if (res == -1 && PyErr_Occurred())
        return NULL;
    if (res == c->send_len && c->rfast && c->wfast &&
        (c->buffer == NULL || (PyList_CheckExact(c->buffer) && PyList_GET_SIZE(c->buffer) == 0))) {
        PyObject *paused = PROTOCOL_PAUSED(self);
        int ppaused = paused == NULL ? 0 : PyObject_IsTrue(paused);
        if (ppaused < 0)
            return NULL;
        if (!ppaused) {
            /* the per-message path: all of it went, nothing more queued, nobody to tell */
            Py_CLEAR(c->sending);
            c->send_len = 0;
            c->queued = 0;
            Py_RETURN_NONE;
        }
    }
    return PyObject_CallMethodOneArg(self, s_sent, args[0]);
}

#define UL_CQE_F_BUF_MORE (1U << 4) /* IORING_CQE_F_BUF_MORE, Linux 6.12 */

/* ----------------------------------------------------------------------------- reading */

static PyObject *T_on_recv(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2)
        return PyErr_Format(PyExc_TypeError, "_on_recv() takes 2 arguments (%zd given)", nargs);
    Core *c = CORE(self);
    long res = PyLong_AsLong(args[0]);
    if (res == -1 && PyErr_Occurred())
        return NULL;
    if (res <= 0) {
        PyObject *stack[3] = {self, args[0], args[1]};
        return PyObject_VectorcallMethod(s_on_recv_end, stack,
                                         3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    unsigned long flags = PyLong_AsUnsignedLong(args[1]);
    if (flags == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    if (c->take == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "transport has no buffer ring");
        return NULL;
    }
    PyObject *bid = PyLong_FromUnsignedLong(flags >> 16);
    if (bid == NULL)
        return NULL;
    PyObject *take = Py_NewRef(c->take);
    /* CQE_F_BUF_MORE (an incremental ring): the buffer stays the kernel's after these bytes */
    PyObject *targs[3] = {bid, args[0], (flags & UL_CQE_F_BUF_MORE) ? Py_True : Py_False};
    PyObject *data = PyObject_Vectorcall(take, targs, 3, NULL);
    Py_DECREF(take);
    Py_DECREF(bid);
    if (data == NULL)
        return NULL;
    if ((flags & 2) && c->rfast && c->deliver != NULL) { /* CQE_F_MORE: the recv stays armed */
        PyObject *deliver = Py_NewRef(c->deliver);
        PyObject *ctx = Py_XNewRef(c->ctx);
        PyObject *r = run_in(ctx, deliver, data);
        Py_XDECREF(ctx);
        Py_DECREF(deliver);
        Py_DECREF(data);
        if (r == NULL) {
            if (exit_exception() || fatal_error(self, s_data_failed) < 0)
                return NULL;
        } else {
            Py_DECREF(r);
        }
        Py_RETURN_NONE;
    }
    PyObject *stack[3] = {self, data, args[1]};
    PyObject *r = PyObject_VectorcallMethod(s_on_recv_data, stack,
                                            3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(data);
    return r;
}

/* ------------------------------------------------------------------------------- type */

static int T_traverse(PyObject *self, visitproc visit, void *arg)
{
    Core *c = CORE(self);
    Py_VISIT(Py_TYPE(self));
    for (int i = 0; i < N_BASE_SLOTS; i++)
        Py_VISIT(*SLOT(self, i));
    Py_VISIT(c->ctx);
    Py_VISIT(c->deliver);
    Py_VISIT(c->take);
    Py_VISIT(c->buffer);
    Py_VISIT(c->sending);
    Py_VISIT(c->send_id);
    Py_VISIT(c->prep_send);
    Py_VISIT(c->on_sent_cb);
    return 0;
}

static int T_clear(PyObject *self)
{
    Core *c = CORE(self);
    Py_CLEAR(c->on_sent_cb);
    Py_CLEAR(c->prep_send);
    Py_CLEAR(c->deliver);
    Py_CLEAR(c->take);
    Py_CLEAR(c->buffer);
    Py_CLEAR(c->sending);
    Py_CLEAR(c->send_id);
    Py_CLEAR(c->ctx);
    for (int i = 0; i < N_BASE_SLOTS; i++)
        Py_CLEAR(*SLOT(self, i));
    return 0;
}

static void T_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    T_clear(self);
    tp->tp_free(self);
    /* a Python subclass's subtype_dealloc leaves dropping the type to its heap-type base */
    Py_DECREF(tp);
}

static PyObject *T_is_closing(PyObject *self, PyObject *noargs)
{
    return PyBool_FromLong(CORE(self)->closing);
}

static PyMethodDef T_methods[] = {
    {"is_closing", (PyCFunction)T_is_closing, METH_NOARGS,
     "is_closing() (asyncio.BaseTransport; StreamWriter.drain() asks it every time)."},
    {"write", (PyCFunction)T_write, METH_O, "write(data) (asyncio.WriteTransport)."},
    {"_flush", (PyCFunction)T_flush, METH_NOARGS,
     "_flush(): the loop is about to enter the ring: hand the buffer to the kernel (one SEND)."},
    {"_on_sent", (PyCFunction)(void (*)(void))T_on_sent, METH_FASTCALL,
     "_on_sent(res, flags): the SEND's completion."},
    {"_on_recv", (PyCFunction)(void (*)(void))T_on_recv, METH_FASTCALL,
     "_on_recv(res, flags): a completion of the multishot RECV."},
    {NULL},
};

#define M(name, type) {name, type, 0, 0, NULL}
static PyMemberDef T_members[] = {
    M("_ctx", T_OBJECT),
    M("_deliver", T_OBJECT),
    M("_take", T_OBJECT),
    M("_buffer", T_OBJECT),
    M("_sending", T_OBJECT),
    M("_send_id", T_OBJECT),
    M("_prep_send", T_OBJECT),
    M("_on_sent_cb", T_OBJECT),
    M("_buffered", T_PYSSIZET),
    M("_send_off", T_PYSSIZET),
    M("_send_len", T_PYSSIZET),
    M("_conn_lost", T_PYSSIZET),
    M("_fd", T_INT),
    M("_rfast", T_BOOL),
    M("_wfast", T_BOOL),
    M("_queued", T_BOOL),
    M("_closing", T_BOOL),
    {NULL},
};
static const Py_ssize_t member_field[] = {
    offsetof(Core, ctx), offsetof(Core, deliver), offsetof(Core, take),
    offsetof(Core, buffer), offsetof(Core, sending), offsetof(Core, send_id),
    offsetof(Core, prep_send), offsetof(Core, on_sent_cb), offsetof(Core, buffered),
    offsetof(Core, send_off), offsetof(Core, send_len), offsetof(Core, conn_lost),
    offsetof(Core, fd), offsetof(Core, rfast), offsetof(Core, wfast), offsetof(Core, queued),
    offsetof(Core, closing),
};
_Static_assert(sizeof(member_field) / sizeof(member_field[0]) ==
                   sizeof(T_members) / sizeof(T_members[0]) - 1,
               "T_members and member_field must list the same fields in the same order");

static PyType_Slot T_slots[] = {
    {Py_tp_doc, "The C core of ioladder.aio._transports.SocketTransport (see _speedups.c)."},
    {Py_tp_traverse, T_traverse},
    {Py_tp_clear, T_clear},
    {Py_tp_dealloc, T_dealloc},
    {Py_tp_methods, T_methods},
    {Py_tp_members, T_members},
    {0, NULL},
};

static PyType_Spec T_spec = {
    .name = "ioladder.aio._speedups.TransportCore",
    .basicsize = 0, /* set at import: _FlowControlMixin's size + sizeof(Core) */
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = T_slots,
};

/* ------------------------------------------------------------------------ loop helpers */

static void handle_run_error(PyObject *handle, PyObject *handle_error)
{
    PyObject *exc = fetch_exception();
    if (exc == NULL)
        return;
    PyObject *args[2] = {handle, exc};
    PyObject *r = PyObject_Vectorcall(handle_error, args, 2, NULL);
    Py_DECREF(exc);
    Py_XDECREF(r);
}

/* run_ready(ready, ntodo, handle_error): pop ntodo handles off the deque and run each
 * (handle._run() without debug), handle_error(handle, exc) on an exception. */
static PyObject *m_run_ready(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3)
        return PyErr_Format(PyExc_TypeError, "run_ready() takes 3 arguments");
    Py_ssize_t ntodo = PyLong_AsSsize_t(args[1]);
    if (ntodo == -1 && PyErr_Occurred())
        return NULL;
    PyObject *popleft = PyObject_GetAttr(args[0], s_popleft);
    if (popleft == NULL)
        return NULL;
    PyObject *handle_error = args[2];
    for (Py_ssize_t i = 0; i < ntodo; i++) {
        PyObject *handle = PyObject_CallNoArgs(popleft);
        if (handle == NULL)
            goto error;
        PyObject *cancelled = PyObject_GetAttr(handle, s_cancelled);
        if (cancelled == NULL) {
            Py_DECREF(handle);
            goto error;
        }
        int is_cancelled = PyObject_IsTrue(cancelled);
        Py_DECREF(cancelled);
        if (is_cancelled) {
            Py_DECREF(handle);
            if (is_cancelled < 0)
                goto error;
            continue;
        }
        PyObject *ctx = PyObject_GetAttr(handle, s_context);
        PyObject *cb = ctx ? PyObject_GetAttr(handle, s_callback) : NULL;
        PyObject *cargs = cb ? PyObject_GetAttr(handle, s_args) : NULL;
        PyObject *r = NULL;
        if (cargs != NULL) {
            if (!PyTuple_CheckExact(cargs)) {
                PyErr_SetString(PyExc_TypeError, "handle._args is not a tuple");
            } else if (PyContext_CheckExact(ctx)) {
                if (PyContext_Enter(ctx) == 0) {
                    r = PyObject_Vectorcall(cb, &PyTuple_GET_ITEM(cargs, 0),
                                            PyTuple_GET_SIZE(cargs), NULL);
                    if (PyContext_Exit(ctx) < 0)
                        Py_CLEAR(r);
                }
            } else {
                PyObject *run = PyObject_GetAttr(ctx, s_run);
                if (run != NULL) {
                    PyObject *call = PyTuple_New(PyTuple_GET_SIZE(cargs) + 1);
                    if (call != NULL) {
                        PyTuple_SET_ITEM(call, 0, Py_NewRef(cb));
                        for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(cargs); j++)
                            PyTuple_SET_ITEM(call, j + 1, Py_NewRef(PyTuple_GET_ITEM(cargs, j)));
                        r = PyObject_Call(run, call, NULL);
                        Py_DECREF(call);
                    }
                    Py_DECREF(run);
                }
            }
        }
        Py_XDECREF(ctx);
        Py_XDECREF(cb);
        Py_XDECREF(cargs);
        if (r == NULL) {
            if (exit_exception()) {
                Py_DECREF(handle);
                goto error;
            }
            handle_run_error(handle, handle_error);
            if (PyErr_Occurred()) { /* the handler itself failed: propagate, as Python would */
                Py_DECREF(handle);
                goto error;
            }
        } else {
            Py_DECREF(r);
        }
        Py_DECREF(handle);
    }
    Py_DECREF(popleft);
    Py_RETURN_NONE;
error:
    Py_DECREF(popleft);
    return NULL;
}

/* dispatch(cqes, proactor): ctx(res, flags) for each completion; an exception goes to
 * proactor._handler_error(exc, ctx), except SystemExit/KeyboardInterrupt, which put the
 * completions not yet dispatched back in front of proactor._backlog and propagate. */
static PyObject *m_dispatch(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_CheckExact(args[0]))
        return PyErr_Format(PyExc_TypeError, "dispatch(cqes: list, proactor)");
    PyObject *cqes = args[0], *proactor = args[1];
    Py_INCREF(cqes);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(cqes); i++) {
        PyObject *t = PyList_GET_ITEM(cqes, i);
        if (!PyTuple_CheckExact(t) || PyTuple_GET_SIZE(t) != 3) {
            PyErr_SetString(PyExc_TypeError, "a completion is not a (ctx, res, flags) tuple");
            Py_DECREF(cqes);
            return NULL;
        }
        Py_INCREF(t);
        PyObject *ctx = PyTuple_GET_ITEM(t, 0);
        PyObject *r = PyObject_Vectorcall(ctx, &PyTuple_GET_ITEM(t, 1), 2, NULL);
        if (r != NULL) {
            Py_DECREF(r);
            Py_DECREF(t);
            continue;
        }
        if (exit_exception()) {
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            PyObject *rest = PyList_GetSlice(cqes, i + 1, PyList_GET_SIZE(cqes));
            PyObject *backlog = rest ? PyObject_GetAttr(proactor, s_backlog) : NULL;
            if (backlog != NULL && PyList_SetSlice(backlog, 0, 0, rest) < 0)
                PyErr_Clear();
            Py_XDECREF(backlog);
            Py_XDECREF(rest);
            PyErr_Clear();
            PyErr_Restore(type, value, tb);
            Py_DECREF(t);
            Py_DECREF(cqes);
            return NULL;
        }
        PyObject *exc = fetch_exception();
        PyObject *hargs[3] = {proactor, exc, ctx};
        r = PyObject_VectorcallMethod(s_handler_error, hargs, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                      NULL);
        Py_XDECREF(exc);
        Py_DECREF(t);
        if (r == NULL) {
            Py_DECREF(cqes);
            return NULL;
        }
        Py_DECREF(r);
    }
    Py_DECREF(cqes);
    Py_RETURN_NONE;
}

/* flush_all(flushq): transport._flush() for each, then flushq.clear() (not after a raise). */
static PyObject *m_flush_all(PyObject *module, PyObject *flushq)
{
    if (!PyList_CheckExact(flushq))
        return PyErr_Format(PyExc_TypeError, "flush_all(list)");
    Py_INCREF(flushq);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(flushq); i++) {
        PyObject *t = Py_NewRef(PyList_GET_ITEM(flushq, i));
        int r;
        if (Py_TYPE(t)->tp_base == CoreType &&
            _PyType_Lookup(Py_TYPE(t), s_flush) == _PyType_Lookup(CoreType, s_flush))
            r = flush(t);
        else
            r = call_method_void(t, s_flush, NULL, 0);
        Py_DECREF(t);
        if (r < 0) {
            Py_DECREF(flushq);
            return NULL;
        }
    }
    int r = PyList_SetSlice(flushq, 0, PyList_GET_SIZE(flushq), NULL);
    Py_DECREF(flushq);
    if (r < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* -------------------------------------------------------------------------- call_soon */

/* CallSoon(loop, fallback): the loop's call_soon as a C callable (set on the instance: every
 * future's completion and every stream wakeup goes through it). The common case builds the
 * events.Handle itself, its slots filled as Handle.__init__ fills them, and appends it to
 * loop._ready; with the loop in debug mode, or keyword arguments other than context, it calls
 * fallback (the Python method), which is also the one place the contract is written. */

static PyTypeObject *HandleType;  /* asyncio.events.Handle, when its slots are the expected */
static const char *const handle_slot_names[] = {"_callback", "_args", "_cancelled", "_loop",
                                                "_source_traceback", "_repr", "_context"};
#define N_HANDLE_SLOTS 7
static Py_ssize_t handle_slot[N_HANDLE_SLOTS];
static PyObject *s_debug, *s_closed, *s_ready, *s_context_kw;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *loop;
    PyObject *ready;    /* loop._ready (a deque: asyncio never replaces it) */
    PyObject *append;   /* loop._ready.append */
    PyObject *fallback; /* the Python call_soon, bound */
} CallSoon;

static PyTypeObject *CallSoonType;

static PyObject *call_fallback(CallSoon *cs, PyObject *const *args, size_t nargsf,
                               PyObject *kwnames)
{
    return PyObject_Vectorcall(cs->fallback, args, nargsf, kwnames);
}

/* loop.<name> is true: -1 on error */
static int loop_flag(PyObject *loop, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(loop, name);
    if (v == NULL)
        return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

static PyObject *CallSoon_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf,
                                     PyObject *kwnames)
{
    CallSoon *cs = (CallSoon *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *context = NULL;
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, 0);
        if (PyTuple_GET_SIZE(kwnames) != 1 ||
            (key != s_context_kw && PyUnicode_Compare(key, s_context_kw) != 0))
            return call_fallback(cs, args, nargsf, kwnames);
        context = args[nargs];
    }
    if (nargs < 1 || HandleType == NULL)
        return call_fallback(cs, args, nargsf, kwnames);
    int debug = loop_flag(cs->loop, s_debug);
    if (debug < 0)
        return NULL;
    if (debug)
        return call_fallback(cs, args, nargsf, kwnames);
    int closed = loop_flag(cs->loop, s_closed);
    if (closed < 0)
        return NULL;
    if (closed) {
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return NULL;
    }
    PyObject *cargs = PyTuple_New(nargs - 1);
    if (cargs == NULL)
        return NULL;
    for (Py_ssize_t i = 1; i < nargs; i++)
        PyTuple_SET_ITEM(cargs, i - 1, Py_NewRef(args[i]));
    PyObject *ctx = (context == NULL || context == Py_None) ? PyContext_CopyCurrent()
                                                             : Py_NewRef(context);
    if (ctx == NULL) {
        Py_DECREF(cargs);
        return NULL;
    }
    PyObject *handle = HandleType->tp_alloc(HandleType, 0);
    if (handle == NULL) {
        Py_DECREF(cargs);
        Py_DECREF(ctx);
        return NULL;
    }
    PyObject *values[N_HANDLE_SLOTS] = {Py_NewRef(args[0]), cargs, Py_NewRef(Py_False),
                                        Py_NewRef(cs->loop), Py_NewRef(Py_None),
                                        Py_NewRef(Py_None), ctx};
    for (int i = 0; i < N_HANDLE_SLOTS; i++)
        *(PyObject **)((char *)handle + handle_slot[i]) = values[i];
    PyObject *r = PyObject_CallOneArg(cs->append, handle);
    if (r == NULL) {
        Py_DECREF(handle);
        return NULL;
    }
    Py_DECREF(r);
    return handle;
}

static PyObject *CallSoon_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *loop, *fallback;
    if (!PyArg_ParseTuple(args, "OO:CallSoon", &loop, &fallback))
        return NULL;
    PyObject *ready = PyObject_GetAttr(loop, s_ready);
    if (ready == NULL)
        return NULL;
    PyObject *append = PyObject_GetAttrString(ready, "append");
    if (append == NULL) {
        Py_DECREF(ready);
        return NULL;
    }
    CallSoon *cs = (CallSoon *)type->tp_alloc(type, 0);
    if (cs == NULL) {
        Py_DECREF(ready);
        Py_DECREF(append);
        return NULL;
    }
    cs->vectorcall = CallSoon_vectorcall;
    cs->loop = Py_NewRef(loop);
    cs->ready = ready;
    cs->append = append;
    cs->fallback = Py_NewRef(fallback);
    return (PyObject *)cs;
}

static int CallSoon_traverse(CallSoon *cs, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(cs));
    Py_VISIT(cs->loop);
    Py_VISIT(cs->ready);
    Py_VISIT(cs->append);
    Py_VISIT(cs->fallback);
    return 0;
}

static int CallSoon_clear(CallSoon *cs)
{
    Py_CLEAR(cs->loop);
    Py_CLEAR(cs->ready);
    Py_CLEAR(cs->append);
    Py_CLEAR(cs->fallback);
    return 0;
}

static void CallSoon_dealloc(CallSoon *cs)
{
    PyTypeObject *tp = Py_TYPE(cs);
    PyObject_GC_UnTrack(cs);
    CallSoon_clear(cs);
    tp->tp_free(cs);
    Py_DECREF(tp);
}

static PyMemberDef CallSoon_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(CallSoon, vectorcall), READONLY, NULL},
    {"fallback", T_OBJECT, offsetof(CallSoon, fallback), READONLY, "the Python call_soon"},
    {NULL},
};

static PyType_Slot CallSoon_slots[] = {
    {Py_tp_doc, "CallSoon(loop, fallback): loop.call_soon in C (see _speedups.c)."},
    {Py_tp_new, CallSoon_new},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_traverse, CallSoon_traverse},
    {Py_tp_clear, CallSoon_clear},
    {Py_tp_dealloc, CallSoon_dealloc},
    {Py_tp_members, CallSoon_members},
    {0, NULL},
};

static PyType_Spec CallSoon_spec = {
    .name = "ioladder.aio._speedups.CallSoon",
    .basicsize = sizeof(CallSoon),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = CallSoon_slots,
};

/* Handle's slots, if they are exactly those call_soon fills (else HandleType stays NULL and
 * CallSoon always calls its fallback). */
static int setup_handle(void)
{
    PyObject *mod = PyImport_ImportModule("asyncio.events");
    if (mod == NULL)
        return -1;
    PyObject *h = PyObject_GetAttrString(mod, "Handle");
    Py_DECREF(mod);
    if (h == NULL)
        return -1;
    PyObject *slots = PyObject_GetAttrString(h, "__slots__");
    if (slots == NULL) {
        PyErr_Clear();
        Py_DECREF(h);
        return 0;
    }
    PyObject *want = Py_BuildValue("(ssssssss)", "_callback", "_args", "_cancelled", "_loop",
                                   "_source_traceback", "_repr", "__weakref__", "_context");
    int same = want == NULL ? -1 : PyObject_RichCompareBool(slots, want, Py_EQ);
    Py_XDECREF(want);
    Py_DECREF(slots);
    if (same <= 0 || !PyType_Check(h)) {
        Py_DECREF(h);
        return same < 0 ? -1 : 0;
    }
    for (int i = 0; i < N_HANDLE_SLOTS; i++) {
        PyObject *descr = PyObject_GetAttrString(h, handle_slot_names[i]);
        if (descr == NULL || Py_TYPE(descr) != &PyMemberDescr_Type) {
            Py_XDECREF(descr);
            Py_DECREF(h);
            PyErr_Clear();
            return 0;
        }
        handle_slot[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
        Py_DECREF(descr);
    }
    HandleType = (PyTypeObject *)h;
    return 0;
}

static PyMethodDef module_methods[] = {
    {"run_ready", (PyCFunction)(void (*)(void))m_run_ready, METH_FASTCALL,
     "run_ready(ready, ntodo, handle_error): run ntodo handles from the ready deque."},
    {"dispatch", (PyCFunction)(void (*)(void))m_dispatch, METH_FASTCALL,
     "dispatch(cqes, proactor): call each completion's ctx(res, flags)."},
    {"flush_all", (PyCFunction)m_flush_all, METH_O,
     "flush_all(flushq): each transport's _flush(), then clear the list."},
    {NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "ioladder.aio._speedups",
    "The aio loop's per-message and per-iteration paths in C (see the source's header).", -1,
    module_methods,
};

#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL

PyMODINIT_FUNC PyInit__speedups(void)
{
    INTERN(s_write, "_write");
    INTERN(s_defer_write, "_defer_write");
    INTERN(s_maybe_pause, "_maybe_pause_protocol");
    INTERN(s_fatal_error, "_fatal_error");
    INTERN(s_sent, "_sent");
    INTERN(s_on_recv_data, "_on_recv_data");
    INTERN(s_on_recv_end, "_on_recv_end");
    INTERN(s_run, "run");
    INTERN(s_data_failed, "Fatal error: protocol.data_received() call failed.");
    INTERN(s_write_failed, "Fatal write error on socket transport");
    INTERN(s_flush, "_flush");
    INTERN(s_popleft, "popleft");
    INTERN(s_cancelled, "_cancelled");
    INTERN(s_context, "_context");
    INTERN(s_callback, "_callback");
    INTERN(s_args, "_args");
    INTERN(s_backlog, "_backlog");
    INTERN(s_handler_error, "_handler_error");
    /* interned: the ring's argument parser matches keyword names by identity first */
    PyObject *quiet = PyUnicode_InternFromString("quiet");
    if (quiet == NULL)
        return NULL;
    s_quiet_kw = PyTuple_Pack(1, quiet);
    Py_DECREF(quiet);
    if (s_quiet_kw == NULL)
        return NULL;
    /* as _transports._SEND_FLAGS */
    if ((s_send_flags = PyLong_FromLong(MSG_NOSIGNAL | MSG_WAITALL)) == NULL)
        return NULL;

    INTERN(s_debug, "_debug");
    INTERN(s_closed, "_closed");
    INTERN(s_ready, "_ready");
    INTERN(s_context_kw, "context");
    if (setup_handle() < 0)
        return NULL;

    PyObject *mod = PyImport_ImportModule("asyncio.transports");
    if (mod == NULL)
        return NULL;
    PyObject *base = PyObject_GetAttrString(mod, "_FlowControlMixin");
    Py_DECREF(mod);
    if (base == NULL)
        return NULL;
    if (!PyType_Check(base)) {
        Py_DECREF(base);
        PyErr_SetString(PyExc_ImportError, "asyncio.transports._FlowControlMixin is not a class");
        return NULL;
    }
    for (int i = 0; i < N_BASE_SLOTS; i++) {
        if ((base_slot[i] = cbase_slot_offset(base, base_slot_names[i])) < 0) {
            Py_DECREF(base);
            return NULL;
        }
    }
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        Py_DECREF(base);
        return NULL;
    }
    CoreType = cbase_create(module, &T_spec, base, T_members, member_field,
                            sizeof(member_field) / sizeof(member_field[0]), sizeof(Core),
                            _Alignof(Core), &core_offset);
    Py_DECREF(base);
    if (CoreType == NULL ||
        PyModule_AddObjectRef(module, "TransportCore", (PyObject *)CoreType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    CallSoonType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &CallSoon_spec, NULL);
    if (CallSoonType == NULL ||
        PyModule_AddObjectRef(module, "CallSoon", (PyObject *)CallSoonType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
