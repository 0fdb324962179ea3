"""Campaign templates: sandboxed, strict about missing variables, autoescaped HTML."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailpacer.message.factory import PersonalizedFactory
from mailpacer.message.mime import MessageComposer
from mailpacer.message.render import RenderError, TemplateError, TemplateSet

REPO = Path(__file__).resolve().parents[2]


def make_templates(
    directory: Path,
    *,
    subject: str | None = "Hello {{ name }}",
    text: str | None = "Dear {{ name }},\n",
    html: str | None = None,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for filename, source in (("subject.j2", subject), ("body.txt.j2", text)):
        if source is not None:
            (directory / filename).write_text(source, encoding="utf-8")
    if html is not None:
        (directory / "body.html.j2").write_text(html, encoding="utf-8")
    return directory


def factory_for(templates: TemplateSet) -> PersonalizedFactory:
    composer = MessageComposer(from_header="news@example.org", message_id_domain="example.org")
    return PersonalizedFactory(
        templates, composer, envelope_sender="news@example.org", campaign="spring"
    )


def test_renders_subject_text_and_html(tmp_path: Path) -> None:
    ts = TemplateSet(
        make_templates(tmp_path, subject="  Hi {{ name }}!\n", html="<p>Hi {{ name }}</p>\n")
    )
    rendered = ts.render({"name": "Ann"})
    assert rendered.subject == "Hi Ann!"  # stripped, trailing newline gone
    assert rendered.text == "Dear Ann,\n"  # keep_trailing_newline
    assert rendered.html == "<p>Hi Ann</p>\n"


def test_html_is_optional(tmp_path: Path) -> None:
    ts = TemplateSet(make_templates(tmp_path))
    assert ts.html is None
    assert ts.render({"name": "Ann"}).html is None


def test_example_campaign_renders(tmp_path: Path) -> None:
    ts = TemplateSet(REPO / "templates" / "welcome")
    variables = {
        "first_name": "Ann",
        "last_name": "Lee",
        "city": "Graz",
        "member_id": "M-1",
        "campaign": "winter",
        "email": "ann@example.org",
    }
    rendered = ts.render(variables)
    assert rendered.subject == "Ann, your Graz winter guide is here"
    assert "Hello Ann Lee," in rendered.text
    assert rendered.html is not None
    assert "<strong>Ann Lee</strong>" in rendered.html
    with pytest.raises(RenderError, match="'city' is undefined"):
        ts.render({k: v for k, v in variables.items() if k != "city"})


@pytest.mark.parametrize("which", ["subject", "text", "html"])
def test_missing_variable_is_an_error_naming_variable_and_template(
    tmp_path: Path, which: str
) -> None:
    sources = {"subject": "s", "text": "t", "html": "h"}
    sources[which] = "x {{ nickname }} y"
    ts = TemplateSet(make_templates(tmp_path, **sources))
    filename = {"subject": "subject.j2", "text": "body.txt.j2", "html": "body.html.j2"}[which]
    with pytest.raises(RenderError) as info:
        ts.render({"name": "Ann"})
    assert str(info.value) == f"{filename}: 'nickname' is undefined"


@pytest.mark.parametrize(
    "source",
    [
        "{{ missing.attr }}",
        "{{ missing | upper }}",
        "{% if missing %}x{% endif %}",
        "{% for x in missing %}{% endfor %}",
        "{{ missing ~ 'x' }}",
    ],
)
def test_strict_undefined_in_every_use(tmp_path: Path, source: str) -> None:
    ts = TemplateSet(make_templates(tmp_path, text=source))
    with pytest.raises(RenderError, match="'missing' is undefined"):
        ts.render({"name": "x"})


def test_empty_string_variable_is_not_missing(tmp_path: Path) -> None:
    ts = TemplateSet(make_templates(tmp_path))
    assert ts.render({"name": ""}).subject == "Hello"


def test_factory_error_names_variable_and_csv_row(tmp_path: Path) -> None:
    ts = TemplateSet(make_templates(tmp_path, text="Hi {{ first_name }}\n"))
    factory = factory_for(ts)
    with pytest.raises(RenderError) as info:
        factory.build(7, "ann@example.org", {"name": "Ann"}, source_row=42)
    message = str(info.value)
    assert "'first_name' is undefined" in message
    assert "row 42" in message
    assert "body.txt.j2" in message
    # without a row number the template error is passed through unchanged
    with pytest.raises(RenderError, match=r"^body\.txt\.j2: 'first_name' is undefined$"):
        factory.build(7, "ann@example.org", {"name": "Ann"})


def test_factory_unsubscribe_template_is_strict_too(tmp_path: Path) -> None:
    ts = TemplateSet(
        make_templates(tmp_path),
        extra={"unsubscribe_url": "https://example.org/u/{{ token }}"},
    )
    factory = factory_for(ts)
    with pytest.raises(RenderError, match=r"row 3 .*unsubscribe_url: 'token' is undefined"):
        factory.build(1, "ann@example.org", {"name": "Ann"}, source_row=3)
    message = factory.build(1, "ann@example.org", {"name": "Ann", "token": "abc"})
    assert b"List-Unsubscribe: <https://example.org/u/abc>" in message.payload


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ name.__class__ }}",
        "{{ name.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ (1).__class__.__base__.__subclasses__() }}",
        "{{ self.__init__.__globals__ }}",
    ],
)
def test_sandbox_blocks_unsafe_attribute_access(tmp_path: Path, source: str) -> None:
    ts = TemplateSet(make_templates(tmp_path, text=source))
    with pytest.raises(RenderError) as info:
        ts.render({"name": "Ann"})
    message = str(info.value)
    assert message.startswith("body.txt.j2: ")
    assert "is unsafe" in message, message
    assert "<class" not in message


def test_sandbox_blocks_calling_format_to_reach_internals(tmp_path: Path) -> None:
    ts = TemplateSet(make_templates(tmp_path, text="{{ '{0.__class__}'.format(name) }}"))
    with pytest.raises(RenderError, match="unsafe"):
        ts.render({"name": "Ann"})


def test_sandbox_does_not_expose_recipient_objects_internals(tmp_path: Path) -> None:
    class Row:
        secret = "s3cret"

        def _private(self) -> str:
            return "private"

    ts = TemplateSet(make_templates(tmp_path, text="{{ row._private() }}"))
    with pytest.raises(RenderError, match="unsafe"):
        ts.render({"name": "x", "row": Row()})


def test_include_cannot_leave_the_template_directory(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("top secret")
    ts = TemplateSet(make_templates(tmp_path / "campaign", text="{% include '../secret.txt' %}"))
    with pytest.raises(RenderError, match=r"secret\.txt") as info:
        ts.render({"name": "x"})
    assert "top secret" not in str(info.value)


def test_template_exceptions_become_render_errors(tmp_path: Path) -> None:
    ts = TemplateSet(make_templates(tmp_path, text="{{ 1 // n }}"))
    with pytest.raises(RenderError, match=r"body\.txt\.j2: ZeroDivisionError"):
        ts.render({"name": "x", "n": 0})


def test_syntax_error_reports_file_and_line(tmp_path: Path) -> None:
    directory = make_templates(tmp_path, text="line one\nline two\n{% for x in %}\n")
    with pytest.raises(TemplateError) as info:
        TemplateSet(directory)
    message = str(info.value)
    assert str(directory / "body.txt.j2") in message
    assert "line 3" in message


def test_syntax_error_in_unsubscribe_template(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="unsubscribe_url template: line 1"):
        TemplateSet(make_templates(tmp_path), extra={"unsubscribe_url": "{{ x"})


def test_undecodable_template_is_a_template_error(tmp_path: Path) -> None:
    directory = make_templates(tmp_path)
    (directory / "subject.j2").write_bytes(b"caf\xe9 {{ name }}")
    with pytest.raises(TemplateError, match=r"subject\.j2: cannot read"):
        TemplateSet(directory)


def test_html_autoescapes_recipient_data_text_does_not(tmp_path: Path) -> None:
    ts = TemplateSet(
        make_templates(
            tmp_path,
            subject="Hi {{ name }}",
            text="Hi {{ name }}\n",
            html='<p>Hi {{ name }}</p><a title="{{ name }}">x</a>',
        )
    )
    evil = '<script>alert(1)</script>" onmouseover="x & y'
    rendered = ts.render({"name": evil})
    assert rendered.html is not None
    assert "<script>" not in rendered.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered.html
    assert "&#34; onmouseover=&#34;x &amp; y" in rendered.html
    assert rendered.text == f"Hi {evil}\n"
    assert rendered.subject == f"Hi {evil}"


def test_html_safe_filter_is_the_template_authors_explicit_choice(tmp_path: Path) -> None:
    ts = TemplateSet(make_templates(tmp_path, html="{{ '<b>static</b>' | safe }} {{ name }}"))
    assert ts.render({"name": "<i>"}).html == "<b>static</b> &lt;i&gt;"


@pytest.mark.parametrize("missing", ["subject.j2", "body.txt.j2"])
def test_missing_required_template_is_a_clear_error(tmp_path: Path, missing: str) -> None:
    directory = make_templates(tmp_path)
    (directory / missing).unlink()
    with pytest.raises(TemplateError) as info:
        TemplateSet(directory)
    message = str(info.value)
    assert f"has no {missing}" in message
    assert str(directory) in message


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="does not exist"):
        TemplateSet(tmp_path / "nope")


def test_templates_are_compiled_once_not_reloaded(tmp_path: Path) -> None:
    directory = make_templates(tmp_path)
    ts = TemplateSet(directory)
    (directory / "body.txt.j2").write_text("changed {{ name }}")
    assert ts.render({"name": "Ann"}).text == "Dear Ann,\n"
