/* mp_json: conversions between JSON (jansson) and MessagePack.
 *
 * JSON to MessagePack: integers stay integers, reals become float64,
 * strings str, objects maps.  MessagePack to JSON has no exact image for
 * everything: bin becomes a base64 string, ext becomes null, an integer
 * above INT64_MAX a real, a non-finite float null, invalid UTF-8 U+FFFD,
 * and a map key that is not a string its compact JSON text. */
#ifndef MP_JSON_H
#define MP_JSON_H

#include <jansson.h>
#include <msgpack.h>

/* Packs v.  0, or -1 when the packer failed (out of memory). */
int mjson_pack(const json_t *v, msgpack_packer *pk);

/* A new JSON value for o, or NULL when out of memory.  *prec (start it at
 * 0) rises to the digits the floats met so far need to read back exactly:
 * pass JSON_REAL_PRECISION(*prec) to the dump, so 0.1 prints as 0.1. */
json_t *mjson_from_msgpack(const msgpack_object *o, int *prec);

/* Writes o to out as one compact JSON text.  0, or -1 (out of memory or a
 * write error). */
int mjson_print(FILE *out, const msgpack_object *o);

#endif
