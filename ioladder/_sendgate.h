/* The send gate's C entry, shared by a gate (the io_uring ring, ioladder/kernel/_uring.c) and
 * the transport that asks it before each write (ioladder/_transport.c).
 *
 * A gate is any object with a ``sync_send`` attribute. Its type may also publish, as the class
 * attribute SENDGATE_ATTR, a capsule named SENDGATE_CAPSULE that holds this struct: the
 * transport then asks with one C call instead of an attribute lookup and a bool per write, and
 * may hand it the first send of a flush as well (start_send). */
#ifndef IOLADDER_SENDGATE_H
#define IOLADDER_SENDGATE_H

typedef struct {
    int (*sync_send)(PyObject *gate); /* 1: send synchronously now, 0: not now (no error) */
    /* Optional (NULL: absent): start the driver's send of ``chunk`` (the transport's
     * _next_chunk()) with ``send_ctx`` (the transport's _send_ctx) as the op's context.
     * 1: submitted; 0: not for this gate (the transport calls driver.start_send); -1: error. */
    int (*start_send)(PyObject *gate, PyObject *send_ctx, PyObject *chunk);
} ioladder_sendgate;

#define SENDGATE_ATTR "_sendgate_c"
#define SENDGATE_CAPSULE "ioladder.sendgate"

#endif
