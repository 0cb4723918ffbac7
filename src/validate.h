/*
 * validate.h
 *	  The input rules every entry point shares, one SQLSTATE per rule
 *	  (validate.c has the SQL-callable checks the PL/pgSQL entry points use):
 *
 *	- a required value is NULL: 22004 "X must not be null";
 *	- an id, event type or name is '': 22023 "X must not be empty";
 *	- an id (255 bytes), event type (128) or name (200) is longer:
 *	  22001 "X is too long";
 *	- a JSON value that must be an object is not: 22023 "X must be a JSON
 *	  object".
 *
 * The validators are small and inline (the ingest row trigger runs them per
 * row); the errors are raised out of line.
 */
#ifndef PERSONA_VALIDATE_H
#define PERSONA_VALIDATE_H

#include "postgres.h"

#include "utils/jsonb.h"

#include "persona.h"

/* Longest segment or action name, in bytes. */
#define PERSONA_MAX_NAME_BYTES		200

extern void PersonaNullError(const char *what) pg_attribute_noreturn();
extern void PersonaEmptyError(const char *what, const char *hint) pg_attribute_noreturn();
extern void PersonaTooLongError(const char *what, const char *noun, int len,
								int limit) pg_attribute_noreturn();
extern void PersonaNotObjectError(Datum value, const char *what) pg_attribute_noreturn();

/* A required value is there. */
static inline void
PersonaCheckNotNull(bool isnull, const char *what)
{
	if (unlikely(isnull))
		PersonaNullError(what);
}

/* A text of 1 to ``limit`` bytes (``noun`` names it in the detail); returns its length. */
static inline int
PersonaCheckLength(const text *t, const char *what, const char *noun, int limit,
				   const char *empty_hint)
{
	int			len = VARSIZE_ANY_EXHDR(t);

	if (unlikely(len == 0))
		PersonaEmptyError(what, empty_hint);
	if (unlikely(len > limit))
		PersonaTooLongError(what, noun, len, limit);
	return len;
}

/* A user or anonymous id; ``optional`` when NULL may be passed instead. */
static inline int
PersonaCheckId(const text *t, const char *what, bool optional)
{
	return PersonaCheckLength(t, what, "id", PERSONA_MAX_ID_BYTES,
							  optional ? "Pass NULL when the id is not known." : NULL);
}

static inline int
PersonaCheckEventType(const text *t, const char *what)
{
	return PersonaCheckLength(t, what, "event type", PERSONA_MAX_EVENT_TYPE_BYTES, NULL);
}

/* A segment or action name. */
static inline int
PersonaCheckName(const text *t, const char *what)
{
	return PersonaCheckLength(t, what, "name", PERSONA_MAX_NAME_BYTES, NULL);
}

/*
 * A jsonb value that must be an object (NULL included in the check); returns
 * its size.  Only the root container's header is read, in place: no
 * detoasting copy of an inline value.
 */
static inline Size
PersonaCheckObject(Datum value, bool isnull, const char *what)
{
	struct varlena *v;
	uint32		header;

	PersonaCheckNotNull(isnull, what);
	v = PG_DETOAST_DATUM_PACKED(value);
	if (VARSIZE_ANY_EXHDR(v) < sizeof(uint32))
		elog(ERROR, "invalid jsonb value in %s", what);
	memcpy(&header, VARDATA_ANY(v), sizeof(uint32));
	if (unlikely((header & JB_FOBJECT) == 0 || (header & JB_FSCALAR) != 0))
		PersonaNotObjectError(value, what);
	return VARSIZE_ANY_EXHDR(v) + VARHDRSZ;
}

#endif							/* PERSONA_VALIDATE_H */
