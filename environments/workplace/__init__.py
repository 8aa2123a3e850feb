"""`workplace`: an assistant's day at a synthetic company (people, mail, calendar, CRM, project tasks).

The company is generated from the row's `company_seed` (see `company.py`); the agent works as one
employee (the user), on the company's own fixed clock (`today`, `now`), never the wall clock.
The verifier folds the row's `ground_truth` tool calls on a fresh company from the same seed and
compares the changes it makes with the agent's changes: reward 1.0 only for exactly those changes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Generator, Iterable, Mapping
from datetime import date, timedelta
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, Field

from eventsourced_env import (
    Args,
    ArgumentsInvalid,
    Context,
    Environment,
    Task,
    TaskInvalid,
    ToolError,
    VerifyResult,
)

from .company import (
    COLLECTIONS,
    ID_PREFIXES,
    MINUTE,
    Company,
    Customer,
    CustomerStatus,
    Email,
    Meeting,
    Note,
    Person,
    Priority,
    ProjectTask,
    Record,
    TaskStatus,
    generate,
    overlaps,
    parse_minute,
)

__all__ = ["WorkplaceTask", "env", "expected_state", "oracle"]

R = TypeVar("R", bound=Record)
Result = tuple[Company, Any]

MINUTE_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}$"
DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
# The working day find_free_slots searches, in minutes from midnight.
DAY_START, DAY_END, SLOT_STEP = 9 * 60, 17 * 60, 30


class ToolCall(BaseModel):
    """One ground-truth call: a tool's name and its JSON arguments."""

    name: str
    arguments: dict[str, Any]


class WorkplaceTask(Task):
    """A workplace row: which company, and the tool calls that carry out its instruction."""

    company_seed: int
    ground_truth: list[ToolCall] = []


env: Environment[WorkplaceTask, Company] = Environment("workplace", version="3", task=WorkplaceTask)


@env.initial
def initial(task: WorkplaceTask, ctx: Context) -> Company:
    """The company of the row's `company_seed` (the session seed plays no part)."""
    return generate(task.company_seed)


# -- helpers ------------------------------------------------------------------------------------


def _lookup(records: Mapping[str, R], record_id: str, kind: str, finder: str) -> R:
    """The record `record_id`, or a ToolError telling the model how to find a right id."""
    record = records.get(record_id)
    if record is None:
        raise ToolError(f"no {kind} with id {record_id!r}; find the right id with {finder}")
    return record


def _person(state: Company, person_id: str) -> Person:
    return _lookup(state.people, person_id, "person", "search_people")


def _email(state: Company, email_id: str) -> Email:
    return _lookup(state.emails, email_id, "email", "search_emails")


def _meeting(state: Company, meeting_id: str) -> Meeting:
    return _lookup(state.meetings, meeting_id, "meeting", "list_meetings")


def _customer(state: Company, customer_id: str) -> Customer:
    return _lookup(state.customers, customer_id, "customer", "search_customers")


def _task(state: Company, task_id: str) -> ProjectTask:
    return _lookup(state.tasks, task_id, "task", "search_tasks")


def _store(state: Company, collection: str, record: Record) -> Company:
    """`state` with `record` put in `collection`: only that collection's dict is copied."""
    return state.model_copy(update={collection: {**getattr(state, collection), record.id: record}})


def _create(state: Company, collection: str, make: Callable[[str], R]) -> tuple[Company, R]:
    """`state` with a new record built by `make(new_id)`; ids count up and are never reused."""
    number = state.next_ids[collection]
    record = make(f"{ID_PREFIXES[collection]}{number:03d}")
    records = {**getattr(state, collection), record.id: record}
    return state.model_copy(
        update={collection: records, "next_ids": {**state.next_ids, collection: number + 1}}
    ), record


def _delete(state: Company, collection: str, record_id: str) -> Company:
    records = dict(getattr(state, collection))
    del records[record_id]
    return state.model_copy(update={collection: records})


def _changes(args: BaseModel, fields: Iterable[str]) -> dict[str, Any]:
    """The fields an update call sets (those not None); a ToolError if it sets none."""
    changes = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    if not changes:
        raise ToolError(f"nothing to change: give at least one of {', '.join(fields)}")
    return changes


def _matches(query: str, *texts: str) -> bool:
    needle = query.strip().lower()
    return any(needle in text.lower() for text in texts)


def _listing(kind: str, rows: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """A search result: how many matched, and the first `limit` of them."""
    return {"total": len(rows), "shown": min(limit, len(rows)), kind: rows[:limit]}


def _dump(record: BaseModel, fields: Iterable[str] | None = None) -> dict[str, Any]:
    """A record as JSON data (only `fields` if given)."""
    return record.model_dump(mode="json", include=set(fields) if fields is not None else None)


def _minute(text: str) -> str:
    """A checked 'YYYY-MM-DDTHH:MM' (a ToolError for an impossible date such as 02-30)."""
    try:
        return parse_minute(text).strftime(MINUTE)
    except ValueError:
        raise ToolError(f"{text!r} is not a real date and time; use 'YYYY-MM-DDTHH:MM'") from None


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ToolError(f"{text!r} is not a real date; use 'YYYY-MM-DD'") from None


def _addresses(state: Company, addresses: Iterable[str]) -> tuple[str, ...]:
    """Recipients, lower-cased and sorted; each must be an employee or a customer contact."""
    known = {p.email for p in state.people.values()} | {c.contact_email for c in state.customers.values()}
    wanted = sorted({a.strip().lower() for a in addresses})
    unknown = [a for a in wanted if a not in known]
    if unknown:
        raise ToolError(
            f"unknown address(es) {', '.join(unknown)}: only employees (search_people) "
            "and customer contacts (search_customers) can be mailed"
        )
    return tuple(wanted)


def _clash(
    state: Company, people: Iterable[str], start: str, end: str, skip: str = ""
) -> tuple[str, Meeting] | None:
    """The first of `people` with another meeting (not `skip`) in [start, end), and that meeting."""
    wanted = set(people)
    for m in state.meetings.values():
        busy = wanted.intersection(m.attendee_ids)
        if m.id != skip and busy and overlaps(m, start, end):
            return min(busy), m
    return None


def _check_free(state: Company, people: Iterable[str], start: str, end: str, skip: str = "") -> None:
    """A ToolError naming the clash if any of `people` has another meeting in [start, end)."""
    clash = _clash(state, people, start, end, skip)
    if clash is not None:
        person_id, m = clash
        raise ToolError(
            f"{state.people[person_id].name} ({person_id}) is busy then: {m.id} {m.title!r} "
            f"runs {m.start} to {m.end[-5:]}; pick another time (see find_free_slots)"
        )


def _own_upcoming(state: Company, meeting_id: str, action: str) -> Meeting:
    """A meeting the user organizes and that has not started: the only kind the user may change."""
    meeting = _meeting(state, meeting_id)
    if meeting.organizer_id != state.user_id:
        organizer = state.people[meeting.organizer_id].name
        raise ToolError(f"only the organizer ({organizer}) can {action} {meeting_id}; email them instead")
    if meeting.start < state.now:
        raise ToolError(
            f"{meeting_id} started at {meeting.start}, before now ({state.now}); it cannot change"
        )
    return meeting


def _span(state: Company, start: str, minutes: int) -> tuple[str, str]:
    """A future [start, end) from a start and a length; a ToolError for a time already past."""
    begin = _minute(start)
    if begin < state.now:
        raise ToolError(f"{begin} is in the past (now is {state.now}); choose a later time")
    try:
        end = parse_minute(begin) + timedelta(minutes=minutes)
    except OverflowError:
        raise ToolError(f"a meeting starting {begin} would end after the year 9999") from None
    return begin, end.strftime(MINUTE)


# -- arguments ----------------------------------------------------------------------------------


class NoArgs(Args):
    """No arguments."""


def _limit() -> Any:
    return Field(20, ge=1, le=50, description="The most results to return (1-50).")


class SearchPeople(Args):
    """Arguments of `search_people`."""

    query: str = Field("", description="Text matched (case-insensitively) against name, email and title.")
    team: str | None = Field(None, description="Only this team, e.g. 'Sales'.")
    limit: int = _limit()


class PersonRef(Args):
    """Arguments naming one person."""

    person_id: str = Field(description="The person's id, e.g. 'P007'.")


class UpdatePerson(Args):
    """Arguments of `update_person`: the fields to change (omit the others)."""

    person_id: str = Field(description="The person's id, e.g. 'P007'.")
    title: str | None = Field(None, min_length=1, description="New job title.")
    team: str | None = Field(None, min_length=1, description="New team.")
    manager_id: str | None = Field(None, description="Id of the new manager.")
    phone: str | None = Field(None, min_length=1, description="New phone number.")


class SearchEmails(Args):
    """Arguments of `search_emails`."""

    query: str = Field("", description="Text matched (case-insensitively) against subject and body.")
    sender: str | None = Field(None, description="Only mail whose sender address contains this text.")
    folder: Literal["inbox", "archive", "sent"] | None = Field(None, description="Only this folder.")
    limit: int = _limit()


class EmailRef(Args):
    """Arguments naming one email."""

    email_id: str = Field(description="The email's id, e.g. 'E012'.")


class SendEmail(Args):
    """Arguments of `send_email`."""

    to: list[str] = Field(min_length=1, description="Recipient email addresses.")
    cc: list[str] = Field([], description="Addresses to copy.")
    subject: str = Field(min_length=1, description="Subject line.")
    body: str = Field(min_length=1, description="Message text.")


class ReplyEmail(Args):
    """Arguments of `reply_email`."""

    email_id: str = Field(description="The id of the email replied to.")
    body: str = Field(min_length=1, description="Reply text.")
    reply_all: bool = Field(False, description="Also reply to every other recipient and cc.")


class ForwardEmail(Args):
    """Arguments of `forward_email`."""

    email_id: str = Field(description="The id of the email to forward.")
    to: list[str] = Field(min_length=1, description="Recipient email addresses.")
    note: str = Field("", description="Text written above the forwarded message.")


class MoveEmail(Args):
    """Arguments of `move_email`."""

    email_id: str = Field(description="The id of a received email.")
    folder: Literal["inbox", "archive"] = Field(description="Where to move it.")


class ListMeetings(Args):
    """Arguments of `list_meetings`."""

    date_from: str | None = Field(None, pattern=DATE_PATTERN, description="First day, 'YYYY-MM-DD'.")
    date_to: str | None = Field(None, pattern=DATE_PATTERN, description="Last day, 'YYYY-MM-DD'.")
    attendee_id: str | None = Field(None, description="Only meetings this person attends.")
    query: str = Field("", description="Text matched (case-insensitively) against the title.")
    limit: int = _limit()


class MeetingRef(Args):
    """Arguments naming one meeting."""

    meeting_id: str = Field(description="The meeting's id, e.g. 'M004'.")


class FindFreeSlots(Args):
    """Arguments of `find_free_slots`."""

    person_ids: list[str] = Field(min_length=1, description="Everyone who must be free.")
    date: str = Field(pattern=DATE_PATTERN, description="The day, 'YYYY-MM-DD'.")
    duration_minutes: int = Field(ge=15, le=480, description="Length of the slot in minutes.")


class ScheduleMeeting(Args):
    """Arguments of `schedule_meeting`."""

    title: str = Field(min_length=1, description="The meeting's title.")
    start: str = Field(pattern=MINUTE_PATTERN, description="Local start time, 'YYYY-MM-DDTHH:MM'.")
    duration_minutes: int = Field(ge=15, le=480, description="Length in minutes.")
    attendee_ids: list[str] = Field(min_length=1, description="Ids of those invited (you are added).")
    location: str = Field("Video call", min_length=1, description="A room name, or 'Video call'.")


class RescheduleMeeting(Args):
    """Arguments of `reschedule_meeting`."""

    meeting_id: str = Field(description="The meeting's id, e.g. 'M004'.")
    start: str = Field(pattern=MINUTE_PATTERN, description="New local start time, 'YYYY-MM-DDTHH:MM'.")
    duration_minutes: int | None = Field(None, ge=15, le=480, description="New length; omit to keep it.")


class UpdateAttendees(Args):
    """Arguments of `update_attendees`."""

    meeting_id: str = Field(description="The meeting's id, e.g. 'M004'.")
    add: list[str] = Field([], description="Ids of people to invite.")
    remove: list[str] = Field([], description="Ids of attendees to uninvite.")


class SearchCustomers(Args):
    """Arguments of `search_customers`."""

    query: str = Field("", description="Text matched against name, industry and contact.")
    status: CustomerStatus | None = Field(None, description="Only accounts with this status.")
    owner_id: str | None = Field(None, description="Only accounts owned by this person.")
    limit: int = _limit()


class CustomerRef(Args):
    """Arguments naming one customer."""

    customer_id: str = Field(description="The customer's id, e.g. 'C003'.")


class CreateCustomer(Args):
    """Arguments of `create_customer`."""

    name: str = Field(min_length=1, description="The customer company's name.")
    industry: str = Field(min_length=1, description="Its industry, e.g. 'Retail'.")
    contact_name: str = Field(min_length=1, description="The main contact's full name.")
    contact_email: str = Field(pattern=EMAIL_PATTERN, description="The main contact's email address.")
    owner_id: str = Field(description="Id of the employee who owns the account.")
    status: Literal["lead", "active"] = Field("lead", description="'lead' or 'active'.")
    annual_value: int = Field(0, ge=0, description="Annual contract value in US dollars.")


class UpdateCustomer(Args):
    """Arguments of `update_customer`: the fields to change (omit the others)."""

    customer_id: str = Field(description="The customer's id, e.g. 'C003'.")
    status: CustomerStatus | None = Field(None, description="New status.")
    owner_id: str | None = Field(None, description="Id of the new account owner.")
    annual_value: int | None = Field(None, ge=0, description="New annual value in US dollars.")
    contact_name: str | None = Field(None, min_length=1, description="New main contact's name.")
    contact_email: str | None = Field(None, pattern=EMAIL_PATTERN, description="New contact's email.")


class AddCustomerNote(Args):
    """Arguments of `add_customer_note`."""

    customer_id: str = Field(description="The customer's id, e.g. 'C003'.")
    text: str = Field(min_length=1, description="The note.")


class SearchTasks(Args):
    """Arguments of `search_tasks`."""

    query: str = Field("", description="Text matched (case-insensitively) against title and description.")
    project: str | None = Field(None, description="Only this project, e.g. 'Atlas Migration'.")
    assignee_id: str | None = Field(None, description="Only tasks assigned to this person.")
    status: TaskStatus | None = Field(None, description="Only tasks with this status.")
    limit: int = _limit()


class TaskRef(Args):
    """Arguments naming one task."""

    task_id: str = Field(description="The task's id, e.g. 'T011'.")


class CreateTask(Args):
    """Arguments of `create_task`."""

    title: str = Field(min_length=1, description="The task's title.")
    project: str = Field(description="An existing project's name, e.g. 'Atlas Migration'.")
    assignee_id: str = Field(description="Id of the person doing it.")
    due: str = Field(pattern=DATE_PATTERN, description="Due date, 'YYYY-MM-DD'.")
    priority: Priority = Field("medium", description="'low', 'medium' or 'high'.")
    description: str = Field("", description="Details.")


class UpdateTask(Args):
    """Arguments of `update_task`: the fields to change (omit the others)."""

    task_id: str = Field(description="The task's id, e.g. 'T011'.")
    title: str | None = Field(None, min_length=1, description="New title.")
    status: TaskStatus | None = Field(None, description="New status; set 'todo' to reopen a done task.")
    priority: Priority | None = Field(None, description="New priority.")
    due: str | None = Field(None, pattern=DATE_PATTERN, description="New due date, 'YYYY-MM-DD'.")
    description: str | None = Field(None, description="New details.")


class AssignTask(Args):
    """Arguments of `assign_task`."""

    task_id: str = Field(description="The task's id, e.g. 'T011'.")
    assignee_id: str = Field(description="Id of the new assignee.")


# -- people -------------------------------------------------------------------------------------


@env.tool
def get_current_user(state: Company, args: NoArgs, ctx: Context) -> Result:
    """Who you are working for, the company, and the current date and time."""
    return state, {
        "user": _dump(state.people[state.user_id]),
        "company": state.name,
        "today": state.today,
        "now": state.now,
    }


@env.tool
def search_people(state: Company, args: SearchPeople, ctx: Context) -> Result:
    """Find employees by name, email, title or team; returns their ids and contact details."""
    hits = [
        _dump(p, ("id", "name", "email", "title", "team"))
        for p in state.people.values()
        if _matches(args.query, p.name, p.email, p.title)
        and (args.team is None or p.team.lower() == args.team.lower())
    ]
    return state, _listing("people", hits, args.limit)


@env.tool
def get_person(state: Company, args: PersonRef, ctx: Context) -> Result:
    """An employee's full record, with their manager and direct reports."""
    person = _person(state, args.person_id)
    reports = [{"id": p.id, "name": p.name} for p in state.people.values() if p.manager_id == person.id]
    manager = state.people.get(person.manager_id or "")
    return state, {
        **_dump(person),
        "manager_name": manager.name if manager else None,
        "direct_reports": reports,
    }


@env.tool
def update_person(state: Company, args: UpdatePerson, ctx: Context) -> Result:
    """Change an employee's title, team, manager or phone."""
    person = _person(state, args.person_id)
    changes = _changes(args, ("title", "team", "manager_id", "phone"))
    boss = changes.get("manager_id")
    while boss is not None:  # walk up from the new manager: a cycle would pass through the person
        if boss == person.id:
            raise ToolError(f"{person.id} cannot report to {changes['manager_id']}: that makes a cycle")
        boss = _person(state, boss).manager_id
    updated = person.model_copy(update=changes)
    return _store(state, "people", updated), _dump(updated)


# -- email --------------------------------------------------------------------------------------


@env.tool
def search_emails(state: Company, args: SearchEmails, ctx: Context) -> Result:
    """Find emails in your mailbox, newest first; returns ids, senders, subjects and dates."""
    hits = [
        _dump(e, ("id", "sender", "subject", "sent_at", "folder"))
        for e in sorted(state.emails.values(), key=lambda e: (e.sent_at, e.id), reverse=True)
        if _matches(args.query, e.subject, e.body)
        and (args.sender is None or args.sender.lower() in e.sender)
        and (args.folder is None or e.folder == args.folder)
    ]
    return state, _listing("emails", hits, args.limit)


@env.tool
def read_email(state: Company, args: EmailRef, ctx: Context) -> Result:
    """An email in full: sender, recipients, subject, body, date, folder and thread."""
    return state, _dump(_email(state, args.email_id))


def _send(
    state: Company, thread: str | None, to: tuple[str, ...], cc: tuple[str, ...], subject: str, body: str
) -> Result:
    """`state` with a new email from the user in the sent folder (a new thread unless `thread`)."""
    user = state.people[state.user_id]
    state, sent = _create(
        state,
        "emails",
        lambda eid: Email(
            id=eid,
            thread_id=thread or eid,
            sender=user.email,
            to=to,
            cc=tuple(a for a in cc if a not in to),
            subject=subject,
            body=body,
            sent_at=state.now,
            folder="sent",
        ),
    )
    return state, {"sent": True, "email_id": sent.id, "to": list(sent.to), "cc": list(sent.cc)}


@env.tool
def send_email(state: Company, args: SendEmail, ctx: Context) -> Result:
    """Send a new email to employees or customer contacts (by address)."""
    to = _addresses(state, args.to)
    return _send(state, None, to, _addresses(state, args.cc), args.subject, args.body)


@env.tool
def reply_email(state: Company, args: ReplyEmail, ctx: Context) -> Result:
    """Reply to an email (to its sender, or with reply_all to everyone on it); the subject gets 'Re:'."""
    original = _email(state, args.email_id)
    me = state.people[state.user_id].email
    if original.sender == me:
        to, cc = original.to, original.cc if args.reply_all else ()
    else:
        to = (original.sender, *(original.to if args.reply_all else ()))
        cc = original.cc if args.reply_all else ()
    to = tuple(sorted({a for a in to if a != me}))
    subject = original.subject if original.subject.startswith("Re: ") else f"Re: {original.subject}"
    return _send(state, original.thread_id, to, tuple(sorted(set(cc) - {me})), subject, args.body)


@env.tool
def forward_email(state: Company, args: ForwardEmail, ctx: Context) -> Result:
    """Forward an email, with an optional note above it, to employees or customer contacts."""
    original = _email(state, args.email_id)
    to = _addresses(state, args.to)
    quoted = f"---------- Forwarded message ----------\nFrom: {original.sender}\nDate: {original.sent_at}\n"
    body = f"{args.note}\n\n{quoted}Subject: {original.subject}\n\n{original.body}".lstrip()
    return _send(state, original.thread_id, to, (), f"Fwd: {original.subject}", body)


@env.tool
def move_email(state: Company, args: MoveEmail, ctx: Context) -> Result:
    """Move a received email to the archive, or back to the inbox."""
    email = _email(state, args.email_id)
    if email.folder == "sent":
        raise ToolError(f"{email.id} is mail you sent; it stays in the sent folder")
    if email.folder == args.folder:
        raise ToolError(f"{email.id} is already in {args.folder}")
    moved = email.model_copy(update={"folder": args.folder})
    return _store(state, "emails", moved), {"email_id": moved.id, "folder": moved.folder}


@env.tool
def delete_email(state: Company, args: EmailRef, ctx: Context) -> Result:
    """Delete an email for good."""
    email = _email(state, args.email_id)
    return _delete(state, "emails", email.id), {"deleted": email.id}


# -- calendar -----------------------------------------------------------------------------------


@env.tool
def list_meetings(state: Company, args: ListMeetings, ctx: Context) -> Result:
    """Meetings in time order, optionally between two days, for one attendee, or matching a title."""
    hits = [
        _dump(m)
        for m in sorted(state.meetings.values(), key=lambda m: (m.start, m.id))
        if (args.date_from is None or m.start[:10] >= args.date_from)
        and (args.date_to is None or m.start[:10] <= args.date_to)
        and (args.attendee_id is None or args.attendee_id in m.attendee_ids)
        and _matches(args.query, m.title)
    ]
    return state, _listing("meetings", hits, args.limit)


@env.tool
def get_meeting(state: Company, args: MeetingRef, ctx: Context) -> Result:
    """A meeting in full, with its attendees' names."""
    meeting = _meeting(state, args.meeting_id)
    names = {pid: state.people[pid].name for pid in meeting.attendee_ids}
    return state, {**_dump(meeting), "attendees": names}


@env.tool
def find_free_slots(state: Company, args: FindFreeSlots, ctx: Context) -> Result:
    """Start times (every 30 minutes, 09:00-17:00, not past) when all the given people are free."""
    for pid in args.person_ids:
        _person(state, pid)
    day = _day(args.date).isoformat()
    slots = []
    for minute in range(DAY_START, DAY_END - args.duration_minutes + 1, SLOT_STEP):
        start = f"{day}T{minute // 60:02d}:{minute % 60:02d}"
        end = (parse_minute(start) + timedelta(minutes=args.duration_minutes)).strftime(MINUTE)
        if start >= state.now and _clash(state, args.person_ids, start, end) is None:
            slots.append(start)
    return state, {"date": day, "duration_minutes": args.duration_minutes, "free_starts": slots}


@env.tool
def schedule_meeting(state: Company, args: ScheduleMeeting, ctx: Context) -> Result:
    """Schedule a meeting organized by you; fails if any attendee is busy then."""
    attendees = tuple(sorted({state.user_id, *(_person(state, pid).id for pid in args.attendee_ids)}))
    start, end = _span(state, args.start, args.duration_minutes)
    _check_free(state, attendees, start, end)
    state, meeting = _create(
        state,
        "meetings",
        lambda mid: Meeting(
            id=mid,
            title=args.title,
            start=start,
            end=end,
            organizer_id=state.user_id,
            attendee_ids=attendees,
            location=args.location,
        ),
    )
    return state, _dump(meeting)


@env.tool
def reschedule_meeting(state: Company, args: RescheduleMeeting, ctx: Context) -> Result:
    """Move a meeting you organize to a new start (and optionally length); fails on a clash."""
    meeting = _own_upcoming(state, args.meeting_id, "reschedule")
    length = args.duration_minutes
    if length is None:
        length = int((parse_minute(meeting.end) - parse_minute(meeting.start)).total_seconds()) // 60
    start, end = _span(state, args.start, length)
    _check_free(state, meeting.attendee_ids, start, end, skip=meeting.id)
    moved = meeting.model_copy(update={"start": start, "end": end})
    return _store(state, "meetings", moved), _dump(moved)


@env.tool
def update_attendees(state: Company, args: UpdateAttendees, ctx: Context) -> Result:
    """Invite people to, or uninvite them from, a meeting you organize."""
    meeting = _own_upcoming(state, args.meeting_id, "change the attendees of")
    if not args.add and not args.remove:
        raise ToolError("nothing to change: give people to add or remove")
    current = set(meeting.attendee_ids)
    for pid in args.add:
        if _person(state, pid).id in current:
            raise ToolError(f"{pid} already attends {meeting.id}")
    for pid in args.remove:
        if pid not in current:
            raise ToolError(f"{pid} does not attend {meeting.id}; its attendees are {sorted(current)}")
        if pid == meeting.organizer_id:
            raise ToolError(f"{pid} organizes {meeting.id}; cancel the meeting instead")
    _check_free(state, args.add, meeting.start, meeting.end)
    attendees = tuple(sorted((current | set(args.add)) - set(args.remove)))
    updated = meeting.model_copy(update={"attendee_ids": attendees})
    return _store(state, "meetings", updated), _dump(updated)


@env.tool
def cancel_meeting(state: Company, args: MeetingRef, ctx: Context) -> Result:
    """Cancel (delete) a meeting you organize that has not started."""
    meeting = _own_upcoming(state, args.meeting_id, "cancel")
    return _delete(state, "meetings", meeting.id), {"cancelled": meeting.id}


# -- customers ----------------------------------------------------------------------------------


@env.tool
def search_customers(state: Company, args: SearchCustomers, ctx: Context) -> Result:
    """Find customer accounts by name, industry or contact, status or owner."""
    fields = ("id", "name", "industry", "status", "owner_id", "contact_name", "contact_email")
    hits = [
        _dump(c, fields)
        for c in state.customers.values()
        if _matches(args.query, c.name, c.industry, c.contact_name, c.contact_email)
        and (args.status is None or c.status == args.status)
        and (args.owner_id is None or c.owner_id == args.owner_id)
    ]
    return state, _listing("customers", hits, args.limit)


@env.tool
def get_customer(state: Company, args: CustomerRef, ctx: Context) -> Result:
    """A customer account in full, with its notes."""
    return state, _dump(_customer(state, args.customer_id))


@env.tool
def create_customer(state: Company, args: CreateCustomer, ctx: Context) -> Result:
    """Add a customer account (a lead unless told otherwise)."""
    owner = _person(state, args.owner_id)
    clash = next((c for c in state.customers.values() if c.name.lower() == args.name.lower()), None)
    if clash is not None:
        raise ToolError(f"{clash.id} is already called {clash.name!r}; update it instead")
    state, customer = _create(
        state,
        "customers",
        lambda cid: Customer(
            id=cid,
            name=args.name,
            industry=args.industry,
            status=args.status,
            owner_id=owner.id,
            contact_name=args.contact_name,
            contact_email=args.contact_email.lower(),
            annual_value=args.annual_value,
            notes=(),
        ),
    )
    return state, _dump(customer)


@env.tool
def update_customer(state: Company, args: UpdateCustomer, ctx: Context) -> Result:
    """Change a customer's status, owner, annual value or main contact."""
    customer = _customer(state, args.customer_id)
    changes = _changes(args, ("status", "owner_id", "annual_value", "contact_name", "contact_email"))
    if "owner_id" in changes:
        _person(state, changes["owner_id"])
    if "contact_email" in changes:
        changes["contact_email"] = changes["contact_email"].lower()
    updated = customer.model_copy(update=changes)
    return _store(state, "customers", updated), _dump(updated)


@env.tool
def add_customer_note(state: Company, args: AddCustomerNote, ctx: Context) -> Result:
    """Add a dated note, signed by you, to a customer account."""
    customer = _customer(state, args.customer_id)
    note = Note(at=state.today, author_id=state.user_id, text=args.text)
    updated = customer.model_copy(update={"notes": (*customer.notes, note)})
    return _store(state, "customers", updated), {"customer_id": customer.id, "notes": len(updated.notes)}


@env.tool
def delete_customer(state: Company, args: CustomerRef, ctx: Context) -> Result:
    """Delete a lead; active and churned accounts are kept for the records."""
    customer = _customer(state, args.customer_id)
    if customer.status != "lead":
        raise ToolError(
            f"{customer.id} is {customer.status}; only leads can be deleted (set status 'churned' instead)"
        )
    return _delete(state, "customers", customer.id), {"deleted": customer.id}


# -- project tasks ------------------------------------------------------------------------------


@env.tool
def search_tasks(state: Company, args: SearchTasks, ctx: Context) -> Result:
    """Find project tasks by text, project, assignee or status."""
    fields = ("id", "title", "project", "assignee_id", "status", "priority", "due")
    hits = [
        _dump(t, fields)
        for t in state.tasks.values()
        if _matches(args.query, t.title, t.description)
        and (args.project is None or t.project.lower() == args.project.lower())
        and (args.assignee_id is None or t.assignee_id == args.assignee_id)
        and (args.status is None or t.status == args.status)
    ]
    return state, _listing("tasks", hits, args.limit)


@env.tool
def get_task(state: Company, args: TaskRef, ctx: Context) -> Result:
    """A project task in full."""
    return state, _dump(_task(state, args.task_id))


@env.tool
def create_task(state: Company, args: CreateTask, ctx: Context) -> Result:
    """Create a 'todo' task in an existing project."""
    assignee = _person(state, args.assignee_id)
    projects = sorted({t.project for t in state.tasks.values()})
    if args.project not in projects:
        raise ToolError(f"no project {args.project!r}; the projects are: {', '.join(projects)}")
    if _day(args.due).isoformat() < state.today:
        raise ToolError(f"due date {args.due} is before today ({state.today})")
    state, task = _create(
        state,
        "tasks",
        lambda tid: ProjectTask(
            id=tid,
            title=args.title,
            project=args.project,
            assignee_id=assignee.id,
            status="todo",
            priority=args.priority,
            due=args.due,
            description=args.description,
        ),
    )
    return state, _dump(task)


@env.tool
def update_task(state: Company, args: UpdateTask, ctx: Context) -> Result:
    """Change a task's title, status, priority, due date or description."""
    task = _task(state, args.task_id)
    changes = _changes(args, ("title", "status", "priority", "due", "description"))
    if task.status == "done" and changes.get("status", "done") == "done":
        raise ToolError(f"{task.id} is done; reopen it (status 'todo') before changing it")
    if "due" in changes:
        _day(changes["due"])
    updated = task.model_copy(update=changes)
    return _store(state, "tasks", updated), _dump(updated)


@env.tool
def assign_task(state: Company, args: AssignTask, ctx: Context) -> Result:
    """Give an open task to someone else."""
    task = _task(state, args.task_id)
    assignee = _person(state, args.assignee_id)
    if task.status == "done":
        raise ToolError(f"{task.id} is done; reopen it with update_task before reassigning it")
    if task.assignee_id == assignee.id:
        raise ToolError(f"{task.id} is already assigned to {assignee.name} ({assignee.id})")
    updated = task.model_copy(update={"assignee_id": assignee.id})
    return _store(state, "tasks", updated), _dump(updated)


@env.tool
def complete_task(state: Company, args: TaskRef, ctx: Context) -> Result:
    """Mark an open task as done."""
    task = _task(state, args.task_id)
    if task.status == "done":
        raise ToolError(f"{task.id} is already done")
    updated = task.model_copy(update={"status": "done"})
    return _store(state, "tasks", updated), _dump(updated)


@env.tool
def delete_task(state: Company, args: TaskRef, ctx: Context) -> Result:
    """Delete a task for good."""
    task = _task(state, args.task_id)
    return _delete(state, "tasks", task.id), {"deleted": task.id}


# -- verifier -----------------------------------------------------------------------------------


def expected_state(task: WorkplaceTask) -> Company:
    """The company after the row's ground-truth calls, folded on a fresh company from its seed.

    TaskInvalid if a call names no tool, has arguments the tool refuses, or is a tool error.
    """
    state = env.start(task, Context(task.company_seed, 1, 0.0))
    for seq, call in enumerate(task.ground_truth, start=2):
        tool = env.tools.get(call.name)
        if tool is None:
            raise TaskInvalid(f"the row's ground_truth calls {call.name!r}, which workplace does not have")
        try:
            arguments = tool.validate(call.arguments)
        except ArgumentsInvalid as e:
            raise TaskInvalid(f"the row's ground_truth call {seq - 1} is refused: {e.detail}") from None
        state, observation = env.run_tool(tool, state, arguments, Context(0, seq, 0.0))
        if isinstance(observation, dict) and set(observation) == {"error"}:
            failure = observation["error"]
            raise TaskInvalid(f"the row's ground_truth call {seq - 1} ({call.name}) fails: {failure}")
    return state


def _canon(value: Any) -> Any:
    """JSON data with whitespace in every string collapsed: free text is compared word for word."""
    if isinstance(value, str):
        return " ".join(value.split())
    if isinstance(value, list):
        return [_canon(v) for v in value]
    if isinstance(value, dict):
        return {k: _canon(v) for k, v in value.items()}
    return value


def _created(record: Record) -> str:
    """A new record's content without its id (ids depend on how many records were made before)."""
    data = _canon(record.model_dump(mode="json"))
    if data.get("thread_id") == data["id"]:
        data["thread_id"] = "(new thread)"
    del data["id"]
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode()


def _diff(before: Company, after: Company) -> tuple[dict[str, Any], Counter[str]]:
    """What `after` changed from `before`: {'tasks/T004.status': value, 'emails/E002': '(deleted)'}
    for existing records, and the contents of the records it created."""
    changed: dict[str, Any] = {}
    created: Counter[str] = Counter()
    for collection in COLLECTIONS:
        old: dict[str, Record] = getattr(before, collection)
        new: dict[str, Record] = getattr(after, collection)
        if old is new:  # an untouched collection is the very same dict: skip it
            continue
        for rid, record in old.items():
            now = new.get(rid)
            if now is None:
                changed[f"{collection}/{rid}"] = "(deleted)"
            elif now != record:
                a, b = _canon(record.model_dump(mode="json")), _canon(now.model_dump(mode="json"))
                changed.update({f"{collection}/{rid}.{k}": v for k, v in b.items() if a[k] != v})
        created.update(f"{collection}: {_created(r)}" for rid, r in new.items() if rid not in old)
    return changed, created


@env.verifier
def verify(state: Company, task: WorkplaceTask, response: Any) -> VerifyResult:
    """1.0 iff the agent made exactly the ground truth's changes to the company, and no others."""
    fresh = env.start(task, Context(task.company_seed, 1, 0.0))
    want_changed, want_created = _diff(fresh, expected_state(task))
    got_changed, got_created = _diff(fresh, state)
    wrong = [
        {"change": key, "expected": value, "found": got_changed.get(key, "(unchanged)")}
        for key, value in want_changed.items()
        if got_changed.get(key, "(unchanged)") != value
    ]
    wrong += [
        {"change": "created", "expected": r, "found": None} for r in (want_created - got_created).elements()
    ]
    collateral = [{"change": k, "found": v} for k, v in got_changed.items() if k not in want_changed]
    collateral += [{"change": "created", "found": r} for r in (got_created - want_created).elements()]
    expected = len(want_changed) + sum(want_created.values())
    correctness = 1.0 - len(wrong) / expected if expected else 1.0
    return VerifyResult(
        reward=1.0 if not wrong and not collateral else 0.0,
        components={"correctness": correctness, "collateral_damage": float(len(collateral))},
        details={"expected_changes": expected, "wrong_or_missing": wrong, "collateral": collateral},
    )


# -- oracle -------------------------------------------------------------------------------------


def oracle(row: dict[str, Any]) -> Generator[tuple[str, dict[str, Any]], Any, None]:
    """The scripted solver: yields each ground-truth call (tool, arguments); observations are ignored."""
    for call in WorkplaceTask.model_validate(row).ground_truth:
        yield call.name, call.arguments
