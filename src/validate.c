/*
 * validate.c
 *	  The errors of the shared input rules (validate.h), and one SQL
 *	  function per rule for the entry points written in PL/pgSQL, so that
 *	  the same bad input gives the same SQLSTATE and message everywhere.
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "validate.h"

void
PersonaNullError(const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
			 errmsg("%s must not be null", what)));
}

void
PersonaEmptyError(const char *what, const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("%s must not be empty", what),
			 hint != NULL ? errhint("%s", hint) : 0));
}

void
PersonaTooLongError(const char *what, const char *noun, int len, int limit)
{
	ereport(ERROR,
			(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
			 errmsg("%s is too long", what),
			 errdetail("The %s has %d bytes; the limit is %d.", noun, len, limit)));
}

void
PersonaNotObjectError(Datum value, const char *what)
{
	Jsonb	   *jb = DatumGetJsonbP(value);
	const char *type = "array";

	if (JB_ROOT_IS_SCALAR(jb))
	{
		JsonbValue	scalar;

		if (JsonbExtractScalar(&jb->root, &scalar))
			type = JsonbTypeName(&scalar);
	}
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("%s must be a JSON object", what),
			 errdetail("The value given is a JSON %s.", type)));
}

/* The name of the checked argument, as the caller gives it. */
static const char *
What(FunctionCallInfo fcinfo)
{
	return PG_ARGISNULL(1) ? "value" : text_to_cstring(PG_GETARG_TEXT_PP(1));
}

/* Checks an id argument (1 to 255 bytes, not NULL); returns it. */
PG_FUNCTION_INFO_V1(persona_check_id);
Datum
persona_check_id(PG_FUNCTION_ARGS)
{
	PersonaCheckNotNull(PG_ARGISNULL(0), What(fcinfo));
	(void) PersonaCheckId(PG_GETARG_TEXT_PP(0), What(fcinfo), false);
	PG_RETURN_DATUM(PG_GETARG_DATUM(0));
}

/* Checks an event type argument (1 to 128 bytes, not NULL); returns it. */
PG_FUNCTION_INFO_V1(persona_check_event_type);
Datum
persona_check_event_type(PG_FUNCTION_ARGS)
{
	PersonaCheckNotNull(PG_ARGISNULL(0), What(fcinfo));
	(void) PersonaCheckEventType(PG_GETARG_TEXT_PP(0), What(fcinfo));
	PG_RETURN_DATUM(PG_GETARG_DATUM(0));
}

/* Checks a segment or action name argument (1 to 200 bytes, not NULL); returns it. */
PG_FUNCTION_INFO_V1(persona_check_name);
Datum
persona_check_name(PG_FUNCTION_ARGS)
{
	PersonaCheckNotNull(PG_ARGISNULL(0), What(fcinfo));
	(void) PersonaCheckName(PG_GETARG_TEXT_PP(0), What(fcinfo));
	PG_RETURN_DATUM(PG_GETARG_DATUM(0));
}

/* Checks a JSON object argument (not NULL); returns it. */
PG_FUNCTION_INFO_V1(persona_check_object);
Datum
persona_check_object(PG_FUNCTION_ARGS)
{
	(void) PersonaCheckObject(PG_ARGISNULL(0) ? (Datum) 0 : PG_GETARG_DATUM(0),
							  PG_ARGISNULL(0), What(fcinfo));
	PG_RETURN_DATUM(PG_GETARG_DATUM(0));
}
