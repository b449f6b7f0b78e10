/* mp_obj: a scalar element decoded straight into a msgpack_object.
 *
 * A worker decodes every item before calling the task; msgpack_unpack with
 * a zone costs several times what a task like builtin.square does, and
 * most items are scalars.  This gives exactly what msgpack_unpack gives for
 * them (test_proto checks every encoding against it); str and bin point
 * into the buffer, as msgpack_unpack's do. */
#ifndef MP_OBJ_H
#define MP_OBJ_H

#include <stddef.h>
#include <stdint.h>
#include <msgpack.h>

/* When buf starts with a whole nil, boolean, integer, float, str or bin,
 * fills *ret and returns its length (> 0); otherwise (a container, an ext,
 * 0xc1 or a cut element) returns 0 and leaves *ret alone: the caller
 * unpacks as usual. */
size_t mp_obj_scalar(const uint8_t *buf, size_t len, msgpack_object *ret);

#endif
