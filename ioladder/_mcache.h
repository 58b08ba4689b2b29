/* A one-entry method cache for a hot C call site: obj.<name>(arg) without looking the method up.
 *
 * Used where C calls the same method of objects of one class once per message (the io_uring
 * ring's receive delivery, conn._on_data(data); the transport's protocol.data_received(data)).
 * The lookup it skips (_PyObject_GetMethod) is most of the cost of such a call from C; CPython's
 * own specializing interpreter caches calls the same way.
 *
 * Valid while type(obj) is the cached type with the same version tag -- the tag changes
 * whenever an attribute of the class or of any base is set or deleted -- and only for classes
 * whose instances have no __dict__ (nothing can shadow the class attribute) and attributes that
 * bind like methods (functions, method descriptors). Anything else takes the generic call. */
#ifndef IOLADDER_MCACHE_H
#define IOLADDER_MCACHE_H

typedef struct {
    PyTypeObject *type; /* compared only: a new type at the same address has a new tag */
    unsigned int tag;
    PyObject *meth;     /* strong: the unbound function or method descriptor */
} mcache;

static inline int mcache_tag_valid(PyTypeObject *tp)
{
#ifdef Py_TPFLAGS_VALID_VERSION_TAG
    if (!PyType_HasFeature(tp, Py_TPFLAGS_VALID_VERSION_TAG))
        return 0;
#endif
    return tp->tp_version_tag != 0;
}

/* After a generic call (which gave the type a version tag): cache what the class resolves. */
static void mcache_fill(mcache *mc, PyTypeObject *tp, PyObject *name)
{
    Py_CLEAR(mc->meth);
    mc->type = NULL;
    if (tp->tp_dictoffset != 0 || !mcache_tag_valid(tp) || tp->tp_mro == NULL)
        return;
    PyObject *found = NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tp->tp_mro) && !found; i++) {
        PyObject *dict = ((PyTypeObject *)PyTuple_GET_ITEM(tp->tp_mro, i))->tp_dict;
        if (dict == NULL)
            return; /* a type whose dict is not at hand: do not guess */
        found = PyDict_GetItemWithError(dict, name);
        if (found == NULL && PyErr_Occurred()) {
            PyErr_Clear();
            return;
        }
    }
    if (found == NULL || !PyType_HasFeature(Py_TYPE(found), Py_TPFLAGS_METHOD_DESCRIPTOR))
        return;
    mc->meth = Py_NewRef(found);
    mc->type = tp;
    mc->tag = tp->tp_version_tag;
}

/* obj.<name>(arg): a new reference, or NULL with an exception set. The caller holds a
 * reference to obj for the duration. */
static inline PyObject *mcache_call1(mcache *mc, PyObject *obj, PyObject *name, PyObject *arg)
{
    PyTypeObject *tp = Py_TYPE(obj);
    if (tp == mc->type && tp->tp_version_tag == mc->tag && mcache_tag_valid(tp)) {
        PyObject *args[2] = {obj, arg};
        return PyObject_Vectorcall(mc->meth, args, 2, NULL);
    }
    PyObject *r = PyObject_CallMethodOneArg(obj, name, arg);
    if (r != NULL)
        mcache_fill(mc, tp, name);
    return r;
}

#endif
