/* ioladder/_cbase.h: a C base class under a Python class, shared by ioladder/_transport.c and
 * ioladder/aio/_speedups.c.
 *
 * Each of them makes, at import, a heap type that subclasses an asyncio class (so isinstance
 * holds and Python code keeps its attribute names) whose instances are the base's plus a C
 * struct appended at an aligned offset, its fields exposed as member descriptors. The base's
 * own __slots__ are found by name (their offsets), so the C code can read them directly.
 */
#ifndef IOLADDER_CBASE_H
#define IOLADDER_CBASE_H

#include <Python.h>
#include <structmember.h>

/* The offset of the __slots__ member `name` of class `cls`, or -1 with ImportError set. */
static Py_ssize_t cbase_slot_offset(PyObject *cls, const char *name)
{
    PyObject *descr = PyObject_GetAttrString(cls, name);
    if (descr == NULL || Py_TYPE(descr) != &PyMemberDescr_Type ||
        ((PyMemberDescrObject *)descr)->d_member->type != T_OBJECT_EX) {
        Py_XDECREF(descr);
        PyErr_Format(PyExc_ImportError, "%s.%s is not a slot", ((PyTypeObject *)cls)->tp_name,
                     name);
        return -1;
    }
    Py_ssize_t offset = ((PyMemberDescrObject *)descr)->d_member->offset;
    Py_DECREF(descr);
    return offset;
}

/* Create the subclass of `base` described by `spec`, its instances extended by a struct of
 * `size` bytes aligned to `align`: stores the struct's offset in *offset, fills the offsets of
 * the spec's `members` (members[i] is the struct field at fields[i]) and returns the type, or
 * NULL with an exception set. */
static PyTypeObject *cbase_create(PyObject *module, PyType_Spec *spec, PyObject *base,
                                  PyMemberDef *members, const Py_ssize_t *fields, size_t nfields,
                                  size_t size, size_t align, Py_ssize_t *offset)
{
    Py_ssize_t base_size = ((PyTypeObject *)base)->tp_basicsize;
    *offset = (base_size + (Py_ssize_t)align - 1) & ~((Py_ssize_t)align - 1);
    spec->basicsize = (int)(*offset + (Py_ssize_t)size);
    for (size_t i = 0; i < nfields; i++)
        members[i].offset = *offset + fields[i];
    PyObject *bases = PyTuple_Pack(1, base);
    if (bases == NULL)
        return NULL;
    PyTypeObject *type = (PyTypeObject *)PyType_FromModuleAndSpec(module, spec, bases);
    Py_DECREF(bases);
    return type;
}

#endif
