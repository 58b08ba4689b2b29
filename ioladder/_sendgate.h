/* The send gate's C entry, shared by a gate (the io_uring ring, ioladder/kernel/_uring.c) and
 * the transport that asks it before each write (ioladder/_transport.c).
 *
 * A gate is any object with a ``sync_send`` attribute. Its type may also publish, as the class
 * attribute SENDGATE_ATTR, a capsule named SENDGATE_CAPSULE that holds this struct: the
 * transport then asks with one C call instead of an attribute lookup and a bool per write. */
#ifndef IOLADDER_SENDGATE_H
#define IOLADDER_SENDGATE_H

typedef struct {
    int (*sync_send)(PyObject *gate); /* 1: send synchronously now, 0: not now (no error) */
} ioladder_sendgate;

#define SENDGATE_ATTR "_sendgate_c"
#define SENDGATE_CAPSULE "ioladder.sendgate"

#endif
