/*
 * persona.c
 *	  Module entry point: GUCs and the init of each module.
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/guc.h"

#include "announcer.h"
#include "bandit.h"
#include "defcache.h"
#include "campaigns.h"
#include "outbox.h"
#include "persona.h"

PG_MODULE_MAGIC;

int			persona_max_event_bytes = 65536;
bool		persona_maintenance = false;
bool		persona_applying = false;

void		_PG_init(void);

/* The persona.max_event_bytes limit, for the SQL-language functions. */
PG_FUNCTION_INFO_V1(persona_max_event_bytes_limit);
Datum
persona_max_event_bytes_limit(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(persona_max_event_bytes);
}

void
_PG_init(void)
{
	DefineCustomIntVariable("persona.max_event_bytes",
							"Sets the largest properties plus context payload of one event, in bytes.",
							NULL,
							&persona_max_event_bytes,
							65536, 1024, 64 * 1024 * 1024,
							PGC_SUSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomStringVariable("persona.opt_in_channels",
							   "Sets the channels that reach a person only after an explicit grant.",
							   "A comma-separated list of channel names, such as 'email,sms'; "
							   "persona_set_consent records grants.",
							   &persona_opt_in_channels,
							   "",
							   PGC_SUSET,
							   GUC_LIST_INPUT,
							   PersonaCheckOptInChannels, NULL, NULL);

	DefineCustomIntVariable("persona.max_attempts",
							"Sets the number of tries after which a message is dead.",
							NULL,
							&persona_max_attempts,
							5, 1, 100,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("persona.channel_cap_per_day",
							"Sets the number of messages one person may receive per channel per rolling day.",
							"From all triggers and campaigns together; 0 means no cap.",
							&persona_channel_cap_per_day,
							0, 0, 1000000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);
	DefineCustomBoolVariable("persona.maintenance",
							 "Sets whether UPDATE, DELETE and TRUNCATE of the tables persona maintains are allowed.",
							 "persona's own functions set it for their writes; a superuser may set it to repair by hand.",
							 &persona_maintenance,
							 false,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("persona.announce",
							 "Sets whether changes are announced on persona_segment and persona_outbox.",
							 "The announcer, a background worker, sends the notifications; with it off, "
							 "listeners must poll (docs/segments.md, \"Listening\").",
							 &persona_announce,
							 true,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	PersonaBanditInit();

	MarkGUCPrefixReserved("persona");

	PersonaCatalogInit();
	PersonaIngestInit();
	PersonaDefCacheInit();
}
