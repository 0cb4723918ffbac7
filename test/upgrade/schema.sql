-- The schema of a database as lines "section|object|definition", sorted, for
-- test/upgrade/run.sh to diff between an upgraded and a fresh install.
--
-- Scope: every object created after initdb (oid >= 16384, FirstNormalObjectId)
-- outside pg_toast and temporary schemas. The test databases hold nothing
-- but persona, so this is everything persona created, extension members or
-- not (the views it generates at run time included), in any schema. Names
-- only, never oids, so that two databases compare.
--
-- Sections: object (existence, extension membership), extension, extconfig,
-- schema, relation, column, constraint, index, trigger, view, rule,
-- sequence, function, aggregate, type, cast, operator, event trigger,
-- policy, privileges, init privs, comment, depend.
SET timezone = 'UTC';
SET search_path = pg_catalog;

WITH
ext AS (
    SELECT oid FROM pg_extension WHERE extname = 'persona'
),
-- Every object in scope, by catalog.
objs(classid, objid) AS (
    SELECT 'pg_class'::regclass, c.oid FROM pg_class AS c
     WHERE c.oid >= 16384 AND c.relnamespace <> 'pg_toast'::regnamespace
       AND c.relnamespace NOT IN (SELECT n.oid FROM pg_namespace AS n WHERE n.nspname LIKE 'pg\_temp\_%' OR n.nspname LIKE 'pg\_toast\_temp\_%')
    UNION ALL SELECT 'pg_proc'::regclass, oid FROM pg_proc WHERE oid >= 16384
    UNION ALL SELECT 'pg_type'::regclass, t.oid FROM pg_type AS t
     WHERE t.oid >= 16384 AND t.typnamespace <> 'pg_toast'::regnamespace
       AND t.typnamespace NOT IN (SELECT n.oid FROM pg_namespace AS n WHERE n.nspname LIKE 'pg\_temp\_%')
    UNION ALL SELECT 'pg_namespace'::regclass, n.oid FROM pg_namespace AS n
     WHERE n.oid >= 16384 AND n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast\_temp\_%'
    UNION ALL SELECT 'pg_constraint'::regclass, oid FROM pg_constraint WHERE oid >= 16384
    UNION ALL SELECT 'pg_trigger'::regclass, oid FROM pg_trigger WHERE oid >= 16384
    UNION ALL SELECT 'pg_rewrite'::regclass, oid FROM pg_rewrite WHERE oid >= 16384
    UNION ALL SELECT 'pg_attrdef'::regclass, oid FROM pg_attrdef WHERE oid >= 16384
    UNION ALL SELECT 'pg_cast'::regclass, oid FROM pg_cast WHERE oid >= 16384
    UNION ALL SELECT 'pg_operator'::regclass, oid FROM pg_operator WHERE oid >= 16384
    UNION ALL SELECT 'pg_opclass'::regclass, oid FROM pg_opclass WHERE oid >= 16384
    UNION ALL SELECT 'pg_opfamily'::regclass, oid FROM pg_opfamily WHERE oid >= 16384
    UNION ALL SELECT 'pg_amop'::regclass, oid FROM pg_amop WHERE oid >= 16384
    UNION ALL SELECT 'pg_amproc'::regclass, oid FROM pg_amproc WHERE oid >= 16384
    UNION ALL SELECT 'pg_event_trigger'::regclass, oid FROM pg_event_trigger WHERE oid >= 16384
    UNION ALL SELECT 'pg_collation'::regclass, oid FROM pg_collation WHERE oid >= 16384
    UNION ALL SELECT 'pg_conversion'::regclass, oid FROM pg_conversion WHERE oid >= 16384
    UNION ALL SELECT 'pg_policy'::regclass, oid FROM pg_policy WHERE oid >= 16384
    UNION ALL SELECT 'pg_statistic_ext'::regclass, oid FROM pg_statistic_ext WHERE oid >= 16384
    UNION ALL SELECT 'pg_extension'::regclass, oid FROM pg_extension WHERE oid >= 16384
    UNION ALL SELECT 'pg_language'::regclass, oid FROM pg_language WHERE oid >= 16384
    UNION ALL SELECT 'pg_ts_config'::regclass, oid FROM pg_ts_config WHERE oid >= 16384
    UNION ALL SELECT 'pg_ts_dict'::regclass, oid FROM pg_ts_dict WHERE oid >= 16384
    UNION ALL SELECT 'pg_ts_parser'::regclass, oid FROM pg_ts_parser WHERE oid >= 16384
    UNION ALL SELECT 'pg_ts_template'::regclass, oid FROM pg_ts_template WHERE oid >= 16384
    UNION ALL SELECT 'pg_foreign_data_wrapper'::regclass, oid FROM pg_foreign_data_wrapper WHERE oid >= 16384
    UNION ALL SELECT 'pg_foreign_server'::regclass, oid FROM pg_foreign_server WHERE oid >= 16384
    UNION ALL SELECT 'pg_default_acl'::regclass, oid FROM pg_default_acl WHERE oid >= 16384
    UNION ALL SELECT 'pg_transform'::regclass, oid FROM pg_transform WHERE oid >= 16384
    UNION ALL SELECT 'pg_publication'::regclass, oid FROM pg_publication WHERE oid >= 16384
    UNION ALL SELECT 'pg_am'::regclass, oid FROM pg_am WHERE oid >= 16384
),
-- Relations in scope (tables, views, sequences, indexes, composite types).
rels AS (
    SELECT c.* FROM pg_class AS c JOIN objs AS o ON o.classid = 'pg_class'::regclass AND o.objid = c.oid
),
procs AS (
    SELECT p.* FROM pg_proc AS p WHERE p.oid >= 16384
),
-- Privileges, as the effective ACL (a NULL ACL is the kind's default), and
-- the initial privileges of extension members: what pg_dump compares with
-- to dump the GRANTs and REVOKEs made since. Shown as
-- "grantee:privilege[*]/grantor ...", sorted.
acls(section, classid, objid, subid, acl) AS (
    SELECT 'privileges', 'pg_namespace'::regclass, n.oid, 0, coalesce(n.nspacl, acldefault('n', n.nspowner))
      FROM pg_namespace AS n JOIN objs AS o ON o.classid = 'pg_namespace'::regclass AND o.objid = n.oid
    UNION ALL
    SELECT 'privileges', 'pg_class'::regclass, c.oid, 0,
           coalesce(c.relacl, acldefault(CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::"char", c.relowner))
      FROM rels AS c WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
    UNION ALL
    SELECT 'privileges', 'pg_class'::regclass, a.attrelid, a.attnum, a.attacl
      FROM pg_attribute AS a JOIN rels AS c ON c.oid = a.attrelid
     WHERE a.attacl IS NOT NULL AND NOT a.attisdropped
    UNION ALL
    SELECT 'privileges', 'pg_proc'::regclass, p.oid, 0, coalesce(p.proacl, acldefault('f', p.proowner))
      FROM procs AS p
    UNION ALL
    SELECT 'privileges', 'pg_type'::regclass, t.oid, 0, coalesce(t.typacl, acldefault('T', t.typowner))
      FROM pg_type AS t JOIN objs AS o ON o.classid = 'pg_type'::regclass AND o.objid = t.oid
    UNION ALL
    SELECT 'init privs (' || i.privtype::text || ')', i.classoid, i.objoid, i.objsubid, i.initprivs
      FROM pg_init_privs AS i JOIN objs AS o ON o.classid = i.classoid AND o.objid = i.objoid
),
lines(section, object, definition) AS (
    SELECT 'object', pg_describe_object(o.classid, o.objid, 0),
           CASE WHEN EXISTS (SELECT FROM pg_depend AS d, ext
                              WHERE d.classid = o.classid AND d.objid = o.objid
                                AND d.refclassid = 'pg_extension'::regclass
                                AND d.refobjid = ext.oid AND d.deptype = 'e')
                THEN 'extension member' ELSE 'not an extension member' END
      FROM objs AS o

    UNION ALL
    SELECT 'extension', e.extname,
           format('version=%s relocatable=%s schema=%s owner=%s',
                  e.extversion, e.extrelocatable, e.extnamespace::regnamespace,
                  pg_get_userbyid(e.extowner))
      FROM pg_extension AS e WHERE e.oid >= 16384

    UNION ALL
    SELECT 'extconfig', x.rel::regclass::text, coalesce(x.cond, '(none)')
      FROM pg_extension AS e,
           unnest(e.extconfig, e.extcondition) AS x(rel, cond)
     WHERE e.oid >= 16384

    UNION ALL
    SELECT 'schema', n.nspname,
           format('owner=%s', pg_get_userbyid(n.nspowner))
      FROM pg_namespace AS n JOIN objs AS o ON o.classid = 'pg_namespace'::regclass AND o.objid = n.oid

    UNION ALL
    SELECT 'relation', c.oid::regclass::text,
           format('kind=%s persistence=%s options=%s owner=%s rowsecurity=%s/%s replident=%s toast=%s partition=%s%s',
                  c.relkind, c.relpersistence, coalesce(c.reloptions::text, '{}'),
                  pg_get_userbyid(c.relowner), c.relrowsecurity, c.relforcerowsecurity,
                  c.relreplident, c.reltoastrelid <> 0, c.relispartition,
                  coalesce(' ' || pg_get_expr(c.relpartbound, c.oid), ''))
      FROM rels AS c

    UNION ALL
    -- Position among the live columns: ADD COLUMN in an upgrade must put a
    -- column where the fresh install has it (SELECT * and INSERT without a
    -- column list see the order).
    SELECT 'column', format('%s.%s', a.attrelid::regclass, quote_ident(a.attname)),
           format('position=%s type=%s notnull=%s default=%s identity=%s generated=%s collation=%s options=%s',
                  row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum),
                  format_type(a.atttypid, a.atttypmod), a.attnotnull,
                  coalesce(pg_get_expr(d.adbin, d.adrelid), '(none)'),
                  a.attidentity, a.attgenerated,
                  CASE WHEN a.attcollation <> 0 THEN a.attcollation::regcollation::text ELSE '-' END,
                  -- (this server's build keeps a pg_attver entry of its
                  -- own in attoptions, different in every table: skipped)
                  array(SELECT x FROM unnest(a.attoptions) AS x WHERE x NOT LIKE 'pg\_attver=%' ORDER BY 1)::text)
      FROM pg_attribute AS a
      JOIN rels AS c ON c.oid = a.attrelid AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
      LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE a.attnum > 0 AND NOT a.attisdropped

    UNION ALL
    SELECT 'constraint',
           format('%s on %s', quote_ident(k.conname),
                  CASE WHEN k.conrelid <> 0 THEN k.conrelid::regclass::text ELSE k.contypid::regtype::text END),
           format('%s validated=%s', pg_get_constraintdef(k.oid), k.convalidated)
      FROM pg_constraint AS k WHERE k.oid >= 16384

    UNION ALL
    SELECT 'index', i.indexrelid::regclass::text,
           format('%s valid=%s clustered=%s replident=%s',
                  pg_get_indexdef(i.indexrelid), i.indisvalid, i.indisclustered, i.indisreplident)
      FROM pg_index AS i JOIN rels AS c ON c.oid = i.indexrelid

    UNION ALL
    SELECT 'trigger', format('%s on %s', quote_ident(t.tgname), t.tgrelid::regclass),
           format('%s enabled=%s', pg_get_triggerdef(t.oid), t.tgenabled)
      FROM pg_trigger AS t WHERE t.oid >= 16384 AND NOT t.tgisinternal

    UNION ALL
    SELECT 'view', c.oid::regclass::text, pg_get_viewdef(c.oid)
      FROM rels AS c WHERE c.relkind IN ('v', 'm')

    UNION ALL
    SELECT 'rule', format('%s on %s', quote_ident(r.rulename), r.ev_class::regclass),
           pg_get_ruledef(r.oid)
      FROM pg_rewrite AS r WHERE r.oid >= 16384 AND r.rulename <> '_RETURN'

    UNION ALL
    SELECT 'sequence', s.seqrelid::regclass::text,
           format('type=%s start=%s increment=%s min=%s max=%s cache=%s cycle=%s owned by=%s',
                  s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
                  s.seqcache, s.seqcycle,
                  coalesce((SELECT string_agg(pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid)
                                              || ' (' || d.deptype::text || ')', ', ')
                              FROM pg_depend AS d
                             WHERE d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid
                               AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')), '-'))
      FROM pg_sequence AS s JOIN rels AS c ON c.oid = s.seqrelid

    UNION ALL
    -- Functions and procedures: the whole definition (language, volatility,
    -- strictness, SECURITY DEFINER, parallel safety, cost, rows, SET
    -- options, body or C symbol and library), owner and privileges.
    SELECT 'function', p.oid::regprocedure::text,
           format(E'owner=%s\n%s', pg_get_userbyid(p.proowner),
                  CASE WHEN p.prokind IN ('f', 'p', 'w') THEN pg_get_functiondef(p.oid)
                       ELSE format('kind=%s', p.prokind) END)
      FROM procs AS p

    UNION ALL
    SELECT 'aggregate', g.aggfnoid::regprocedure::text,
           format('kind=%s transfn=%s finalfn=%s combinefn=%s serialfn=%s deserialfn=%s '
                  'mtransfn=%s finalextra=%s finalmodify=%s sortop=%s transtype=%s '
                  'transspace=%s initval=%s parallel=%s strict=%s',
                  g.aggkind, g.aggtransfn::regprocedure, g.aggfinalfn, g.aggcombinefn,
                  g.aggserialfn, g.aggdeserialfn, g.aggmtransfn, g.aggfinalextra,
                  g.aggfinalmodify, g.aggsortop::regoperator, g.aggtranstype::regtype,
                  g.aggtransspace, coalesce(g.agginitval, '(null)'), p.proparallel, p.proisstrict)
      FROM pg_aggregate AS g JOIN procs AS p ON p.oid = g.aggfnoid

    UNION ALL
    -- Types of their own (not a relation's row type, not an array type).
    SELECT 'type', t.oid::regtype::text,
           format('typtype=%s len=%s byval=%s align=%s storage=%s in=%s out=%s recv=%s send=%s '
                  'base=%s notnull=%s default=%s enum=%s owner=%s',
                  t.typtype, t.typlen, t.typbyval, t.typalign, t.typstorage,
                  t.typinput, t.typoutput, t.typreceive, t.typsend,
                  CASE WHEN t.typbasetype <> 0 THEN format_type(t.typbasetype, t.typtypmod) ELSE '-' END,
                  t.typnotnull, coalesce(t.typdefault, '(none)'),
                  coalesce((SELECT string_agg(quote_literal(e.enumlabel), ',' ORDER BY e.enumsortorder)
                              FROM pg_enum AS e WHERE e.enumtypid = t.oid), '-'),
                  pg_get_userbyid(t.typowner))
      FROM pg_type AS t JOIN objs AS o ON o.classid = 'pg_type'::regclass AND o.objid = t.oid
     WHERE t.typcategory <> 'A'
       AND NOT EXISTS (SELECT FROM pg_class AS c WHERE c.reltype = t.oid AND c.relkind <> 'c')

    UNION ALL
    SELECT 'cast', format('%s -> %s', c.castsource::regtype, c.casttarget::regtype),
           format('function=%s context=%s method=%s',
                  CASE WHEN c.castfunc <> 0 THEN c.castfunc::regprocedure::text ELSE '-' END,
                  c.castcontext, c.castmethod)
      FROM pg_cast AS c WHERE c.oid >= 16384

    UNION ALL
    SELECT 'operator', o.oid::regoperator::text,
           format('code=%s result=%s commutator=%s negator=%s restrict=%s join=%s merges=%s hashes=%s',
                  o.oprcode, o.oprresult::regtype, o.oprcom::regoperator, o.oprnegate::regoperator,
                  o.oprrest, o.oprjoin, o.oprcanmerge, o.oprcanhash)
      FROM pg_operator AS o WHERE o.oid >= 16384

    UNION ALL
    SELECT 'event trigger', e.evtname,
           format('event=%s function=%s enabled=%s tags=%s',
                  e.evtevent, e.evtfoid::regprocedure, e.evtenabled, coalesce(e.evttags::text, '-'))
      FROM pg_event_trigger AS e WHERE e.oid >= 16384

    UNION ALL
    SELECT 'policy', format('%s on %s', quote_ident(p.polname), p.polrelid::regclass),
           format('cmd=%s permissive=%s roles=%s using=%s check=%s', p.polcmd, p.polpermissive,
                  (SELECT string_agg(CASE r WHEN 0 THEN 'PUBLIC' ELSE pg_get_userbyid(r) END, ',' ORDER BY 1)
                     FROM unnest(p.polroles) AS r),
                  coalesce(pg_get_expr(p.polqual, p.polrelid), '-'),
                  coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '-'))
      FROM pg_policy AS p WHERE p.oid >= 16384

    UNION ALL
    SELECT a.section, pg_describe_object(a.classid, a.objid, a.subid),
           coalesce((SELECT string_agg(format('%s:%s%s/%s',
                                              CASE x.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_get_userbyid(x.grantee) END,
                                              x.privilege_type, CASE WHEN x.is_grantable THEN '*' ELSE '' END,
                                              pg_get_userbyid(x.grantor)), ' ' ORDER BY 1)
                       FROM aclexplode(a.acl) AS x), '(none)')
      FROM acls AS a

    UNION ALL
    SELECT 'comment', pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description
      FROM pg_description AS d JOIN objs AS o ON o.classid = d.classoid AND o.objid = d.objoid

    UNION ALL
    -- Dependencies between objects in scope (a view on its columns, a
    -- sequence owned by its column, a trigger on its function, ...).
    SELECT 'depend', pg_describe_object(d.classid, d.objid, d.objsubid),
           format('%s on %s', d.deptype, pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid))
      FROM pg_depend AS d
      JOIN objs AS o ON o.classid = d.classid AND o.objid = d.objid
      JOIN objs AS r ON r.classid = d.refclassid AND r.objid = d.refobjid
)
-- A definition of several lines (a function's) repeats its section and
-- object on each, so that every line of a diff says what it belongs to.
SELECT section, object,
       replace(definition, E'\n', E'\n' || section || '|' || object || '|  ') AS definition
  FROM lines
 ORDER BY section COLLATE "C", object COLLATE "C", definition COLLATE "C";
